"""Readers accept anything: the trace reader, the viewer (function and command line) and replay's loader skip and
count what they cannot read, and raise only their own typed errors, with the line number (issue 24).

A real trace (a real `dspy.RLM` call with a scripted LM) is mixed with hostile lines: deep nesting, bytes that
are not UTF-8, binary, NaN, lone surrogates, lines longer than the cap. Hypothesis then feeds random bytes (and
random JSON) to each reader.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import dspy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlm_events
from rlm_events.__main__ import main
from rlm_events._json_input import MAX_DEPTH, JsonInputError, loads
from rlm_events.errors import TraceError
from rlm_events.replay import Recorder, Recording, RecordingError, ReplayLM
from rlm_events.trace import JsonlTrace, read_trace, render_html, write_html

DEEP = b"[" * 100_000
NOT_UTF8 = b'{"run_id": "\xff\xfe", "stage": "run_start"}'
BINARY = bytes(range(256)) * 4
HOSTILE_LINES = {
    "deep": DEEP,
    "deep_object": b'{"a":' * 5_000,
    "not_utf8": NOT_UTF8,
    "binary": BINARY.replace(b"\n", b""),
    "huge_int": b'{"run_id": "r", "stage": "pre_iteration", "iteration": ' + b"9" * 10_000 + b"}",
    "nul": b"\x00" * 100,
}


@pytest.fixture
def real_trace(make_rlm, tmp_path) -> list[bytes]:
    """The lines of a real trace of one call."""
    rlm, lm = make_rlm(["x = 6 * 7", "SUBMIT(answer=str(x))"])
    events = rlm_events.instrument(rlm)
    path = tmp_path / "real.jsonl"
    with JsonlTrace(path) as trace, dspy.context(lm=lm):
        trace.install(events)
        rlm(text="t")
    return path.read_bytes().splitlines()


def test_loads_bounds_the_nesting_without_recursion():
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    for text in ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "[" * 100_000, '{"a":' * 900 + "1" + "}" * 900):
        with pytest.raises(JsonInputError, match="nested deeper than") as caught:
            loads(text)
        assert caught.value.line == 1
    with pytest.raises(JsonInputError, match="line 2: not JSON"):
        loads('{"a":\n nope}')


@pytest.mark.parametrize("kind", sorted(HOSTILE_LINES))
def test_each_hostile_line_is_skipped_and_counted_with_its_line_number(real_trace, tmp_path, kind):
    lines = [real_trace[0], HOSTILE_LINES[kind], *real_trace[1:]]
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    trace = read_trace(path)
    assert trace.events == len(real_trace) and trace.skipped_lines == 1
    assert trace.first_skipped[0][0] == 2
    page = write_html(path, tmp_path / "t.html")
    assert page.read_text(encoding="utf-8").count("run_end") >= 1
    assert main(["view", str(path), "-o", str(tmp_path / "cli.html")]) == 0


def test_a_line_longer_than_the_cap_is_skipped_unread(real_trace, tmp_path):
    path = tmp_path / "t.jsonl"
    huge = b'{"pad": "' + b"x" * 100_000 + b'"}'
    path.write_bytes(b"\n".join([huge, *real_trace, huge]) + b"\n")
    trace = read_trace(path, max_line_length=10_000)
    assert trace.events == len(real_trace) and trace.skipped_lines == 2
    assert [n for n, _ in trace.first_skipped] == [1, len(real_trace) + 2]
    assert "longer than 10000" in trace.first_skipped[0][1]
    # The cap is on the line's text: a line of exactly the cap is read.
    exact = max(real_trace, key=len)
    assert read_trace(path, max_line_length=len(exact)).events == len(real_trace)
    with path.open(encoding="utf-8") as text:
        assert read_trace(text, max_line_length=10_000).skipped_lines == 2


def test_nan_and_lone_surrogates_render(real_trace, tmp_path):
    start = json.loads(real_trace[0])
    start["extra"] = float("nan")
    start["inputs"] = {"text": "\ud800"}
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join([json.dumps(start).encode(), *real_trace[1:]]) + b"\n")
    assert read_trace(path).skipped_lines == 0
    page = write_html(path, tmp_path / "t.html").read_text(encoding="utf-8")
    assert "NaN" not in page.split('type="application/json"')[1]


def test_a_text_file_that_cannot_decode_raises_a_trace_error_with_the_line(real_trace, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join([*real_trace, NOT_UTF8]) + b"\n")
    with path.open(encoding="utf-8") as text, pytest.raises(TraceError) as caught:
        read_trace(text)
    assert caught.value.line is not None and caught.value.line >= 1


def test_the_viewer_says_what_it_skipped_when_nothing_is_left(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_bytes(DEEP + b"\n")
    with pytest.raises(TraceError, match="1 line skipped, the first at line 1: nested deeper") as caught:
        render_html(read_trace(path))
    assert caught.value.line == 1 and isinstance(caught.value, ValueError)
    assert main(["view", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TraceError" in err and "Traceback" not in err


def test_the_cli_prints_one_line_for_an_unwritable_output(real_trace, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(real_trace) + b"\n")
    assert main(["view", str(path), "-o", str(tmp_path / "no-such-dir" / "t.html")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FileNotFoundError" in err


@pytest.fixture
def recording_file(make_rlm, tmp_path) -> Path:
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    recorder = Recorder()
    recorder.install(events)
    with dspy.context(lm=lm):
        rlm(text="t")
    return recorder.save(tmp_path / "run.json")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"format": "rlm-events-recording/1",\n "run_id": "\xff"}', r"line 2: not UTF-8"),
        (b'{"format":\n' + DEEP, r"line 2: nested deeper than"),
        (BINARY, r"line 2: not UTF-8 \(byte 128\)"),  # byte 10 is a newline
        (b"\n\n{nope", r"line 3: not JSON"),
        (b'{"format": "rlm-events-recording/1", "run_id": ' + b"1" * 10_000 + b"}", r"not JSON"),
    ],
)
def test_replay_raises_recording_errors_with_the_line(tmp_path, content, match):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=match):
        ReplayLM.from_file(path)


def test_replay_refuses_a_recording_larger_than_the_cap(recording_file):
    size = recording_file.stat().st_size
    assert Recording.load(recording_file, max_bytes=size).run_id
    with pytest.raises(RecordingError, match=f"larger than {size - 1} bytes"):
        Recording.load(recording_file, max_bytes=size - 1)


# -- random input ---------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
STAGES = st.sampled_from(["run_start", "pre_iteration", "post_execution", "tool_call", "run_end", "other"])
RECORDS = st.fixed_dictionaries(
    {"run_id": st.text(max_size=4) | JSON_VALUES, "stage": STAGES | JSON_VALUES},
    optional={
        "iteration": st.integers() | JSON_VALUES,
        "t_mono": st.floats() | JSON_VALUES,
        "t_wall": st.text() | JSON_VALUES,
        "dt_prev_s": st.floats() | JSON_VALUES,
        "usage": JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
LINES = st.one_of(
    st.binary(max_size=200),
    RECORDS.map(lambda r: json.dumps(r).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)
FILES = st.one_of(st.binary(max_size=2000), st.lists(LINES, max_size=8).map(b"\n".join))
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(content=FILES)
def test_any_bytes_give_a_trace_or_a_typed_error(tmp_path, content):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    trace = read_trace(path, max_line_length=500)
    assert trace.skipped_lines >= len(trace.first_skipped)
    try:
        write_html(path, tmp_path / "t.html")
    except TraceError:
        assert not read_trace(path).runs
    assert main(["view", str(path), "-o", str(tmp_path / "cli.html")]) in (0, 1)


@HYPOTHESIS
@given(content=FILES | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_give_a_recording_or_a_recording_error(tmp_path, content):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with contextlib.suppress(RecordingError):  # anything else fails the test
        ReplayLM.from_file(path)
