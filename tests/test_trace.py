"""The JSONL trace recorder and the progress tap, on real instrumented dspy.RLM runs."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.taps._text import preview
from rlm_events.taps.progress import ProgressTap
from rlm_events.testing import InProcessInterpreter
from rlm_events.trace import JsonlTrace

STEPS = [
    ("Look.", "print(len(text))"),
    ("Ask.", "note = llm_query('say hi')\nprint(note)"),
    ("Break.", "1 / 0"),
    ("Done.", "SUBMIT(answer=note + '!')"),
]
COMMON = {"run_id", "stage", "iteration", "t_mono", "t_wall", "dt_prev_s"}


def lines_of(path: Path) -> list[dict[str, Any]]:
    rlm_events.flush()  # the trace writes its lines on the tap delivery worker
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class StageLog:
    """A tap that keeps (stage, iteration) of every event: the ground truth to compare the file with."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None]] = []

    def __call__(self, ctx: Any) -> None:
        self.seen.append((ctx.stage.value, ctx.iteration))


def test_one_line_per_stage_event(make_rlm, tmp_path):
    rlm, lm = make_rlm(STEPS, sub="hi", cost_per_1k_tokens=0.002)
    events = rlm_events.instrument(rlm)
    log = StageLog()
    with JsonlTrace(tmp_path / "trace.jsonl") as trace:
        trace.install(events)
        events.tap(log)
        with dspy.context(lm=lm):
            assert rlm(text="abcdef").answer == "hi!"

    lines = lines_of(tmp_path / "trace.jsonl")
    assert [(line["stage"], line["iteration"]) for line in lines] == log.seen
    assert {line["run_id"] for line in lines} == {lines[0]["run_id"]}
    assert [line["stage"] for line in lines if line["iteration"] == 1] == [
        "pre_iteration",
        "pre_execution",
        "tool_call",
        "post_execution",
        "post_iteration",
    ]
    assert lines[0]["stage"] == "run_start" and lines[-1]["stage"] == "run_end"


def test_async_run_is_traced_too(make_rlm, tmp_path):
    rlm, lm = make_rlm(STEPS, sub="hi")
    events = rlm_events.instrument(rlm)
    log = StageLog()
    trace = JsonlTrace(tmp_path / "trace.jsonl").install(events)
    events.tap(log)

    async def main() -> Any:
        with dspy.context(lm=lm):
            return await rlm.acall(text="abcdef")

    assert asyncio.run(main()).answer == "hi!"
    trace.close()
    lines = lines_of(tmp_path / "trace.jsonl")
    assert [(line["stage"], line["iteration"]) for line in lines] == log.seen
    assert sum(line["stage"] == "tool_call" for line in lines) == 1
    assert lines[-1]["stage"] == "run_end" and lines[-1]["prediction"]["answer"] == "hi!"


def test_each_line_is_built_at_its_event_and_written_in_order_off_the_run(make_rlm, tmp_path):
    """The line is built on the run's thread at the event (its times are the event's); the writing is deferred to
    the delivery worker, in order, so a queued tap registered after the trace finds the file up to its own event."""
    path = tmp_path / "trace.jsonl"
    rlm, lm = make_rlm(STEPS, sub="hi")
    events = rlm_events.instrument(rlm)
    log = StageLog()
    trace = JsonlTrace(path).install(events)
    events.tap(log)
    on_disk: list[list[str]] = []
    writer_threads: set[str] = set()
    # Queued after the trace's line for the same event: it reads the file on the worker, after that line's write.
    events.tap(lambda ctx: on_disk.append([json.loads(line)["stage"] for line in path.read_text().splitlines()]))
    events.tap(lambda ctx: writer_threads.add(threading.current_thread().name))
    with dspy.context(lm=lm):
        rlm(text="abc")
    trace.close()
    assert writer_threads == {"rlm-events-taps"}
    assert len(on_disk) == len(log.seen) > 10
    for seen_so_far, file_so_far in enumerate(on_disk, start=1):
        assert file_so_far == [stage for stage, _ in log.seen[:seen_so_far]]
    t_mono = [line["t_mono"] for line in lines_of(path)]
    assert t_mono == sorted(t_mono)


def test_schema_fields(make_rlm, tmp_path):
    long_output = "print('x' * 5000)"
    steps = [("Long.", long_output), *STEPS[1:]]
    rlm, lm = make_rlm(steps, sub="hi", cost_per_1k_tokens=0.002, max_iters=5)
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    JsonlTrace(path, preview_chars=100).install(events)
    with dspy.context(lm=lm):
        rlm(text="abcdef")
    lines = lines_of(path)
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        assert line.keys() >= COMMON
        datetime.fromisoformat(line["t_wall"])
        by_stage.setdefault(line["stage"], []).append(line)

    # dt_prev_s is the gap between this run's consecutive events
    assert lines[0]["dt_prev_s"] == 0.0
    for before, after in itertools.pairwise(lines):
        assert after["dt_prev_s"] == pytest.approx(after["t_mono"] - before["t_mono"], abs=2e-6)

    start = by_stage["run_start"][0]
    assert start["module"] == "RLM(text -> answer)" and start["max_iters"] == 5
    assert start["inputs"] == {"text": "abcdef"} and start["iteration"] is None

    first_pre, first_post = by_stage["pre_execution"][0], by_stage["post_execution"][0]
    assert first_pre["code"] == long_output and first_pre["reasoning"] == "Long." and first_pre["skipped"] is False
    assert first_post["code"] == long_output
    assert first_post["result_preview"] == "x" * 100 + "… [+4900 chars]"
    assert first_post["result_type"] == "str" and first_post["is_error"] is False
    failed = by_stage["post_execution"][2]
    assert failed["is_error"] is True and "ZeroDivisionError" in failed["result_preview"]

    assert [line["history_len"] for line in by_stage["pre_iteration"]] == [0, 1, 2, 3]
    assert [line["submitted"] for line in by_stage["post_iteration"]] == [False, False, False, True]

    (tool,) = by_stage["tool_call"]
    assert tool["tool"] == {"name": "llm_query", "args": "'say hi'"} and tool["result_preview"] == "hi"
    assert tool["iteration"] == 1

    end = by_stage["run_end"][0]
    assert end["iterations"] == 4 and end["forced_extract"] is False and end["error"] is None
    assert end["duration_s"] > 0
    assert end["prediction"] == {"answer": "hi!", "final_reasoning": "Done."}  # the trajectory is left out

    # usage: what the LM recorded for this call (4 actions + 1 sub-call), growing as it goes
    totals = [line["usage"]["total_tokens"] for line in lines]
    assert totals == sorted(totals) and totals[0] == 0
    assert end["usage"]["lm_calls"] == len(lm.history) == 5
    assert end["usage"]["total_tokens"] == sum(entry["usage"]["total_tokens"] for entry in lm.history)
    assert end["usage"]["cost_usd"] == pytest.approx(sum(entry["cost"] for entry in lm.history))


def test_usage_counts_only_this_call(make_rlm, tmp_path):
    rlm, lm = make_rlm(["SUBMIT(answer='a')"])
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    JsonlTrace(path).install(events)
    with dspy.context(lm=lm):
        rlm(text="x")
        rlm(text="y")
    ends = [line for line in lines_of(path) if line["stage"] == "run_end"]
    assert len(lm.history) == 2
    assert [end["usage"]["lm_calls"] for end in ends] == [1, 1]
    assert [end["usage"]["total_tokens"] for end in ends] == [e["usage"]["total_tokens"] for e in lm.history]


def test_usage_is_exact_per_call_when_a_budget_meters_it(make_rlm, tmp_path):
    from rlm_events.builtins import Budget

    rlm, lm = make_rlm(STEPS, sub="hi", interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    Budget(max_tokens=10**9).install(events)
    path = tmp_path / "trace.jsonl"
    trace = JsonlTrace(path).install(events)
    spent: dict[str, Any] = {}
    events.tap([Stage.RUN_END], lambda ctx: spent.setdefault(ctx.run.id, Budget.spent(ctx)))

    def call(i: int) -> None:
        with dspy.context(lm=lm):
            rlm(text=f"text {i}")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trace.close()
    ends = [line for line in lines_of(path) if line["stage"] == "run_end"]
    assert len(ends) == 4
    for end in ends:  # concurrent calls on one LM: each counts its own 4 actions and 1 llm_query, no more
        assert end["usage"]["lm_calls"] == 5
        assert end["usage"]["total_tokens"] == spent[end["run_id"]].tokens
    assert sum(end["usage"]["total_tokens"] for end in ends) == sum(e["usage"]["total_tokens"] for e in lm.history)


def test_a_failing_run_records_run_end_with_the_error(make_rlm, tmp_path):
    rlm, lm = make_rlm(STEPS)
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    JsonlTrace(path).install(events)

    @events.middleware(Stage.PRE_ITERATION)
    def fail_second(ctx, next):
        if ctx.iteration == 1:
            raise RuntimeError("no budget left")
        return next(ctx)

    with dspy.context(lm=lm), pytest.raises(RuntimeError, match="no budget left"):
        rlm(text="abc")
    lines = lines_of(path)
    assert [line["stage"] for line in lines][-2:] == ["post_iteration", "run_end"]
    end = lines[-1]
    assert end["error"] == "RuntimeError: no budget left"
    assert end["prediction"] is None and end["iterations"] == 1  # the second never started: its pre_iteration raised


def test_forced_extract_is_recorded(make_rlm, tmp_path):
    rlm, lm = make_rlm(["print('thinking')"], max_iters=2, extract={"answer": "from extract"})
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    JsonlTrace(path).install(events)
    with dspy.context(lm=lm):
        assert rlm(text="abc").answer == "from extract"
    lines = lines_of(path)
    assert [line["stage"] for line in lines][-2:] == ["extract", "run_end"]
    assert lines[-2]["prediction"]["answer"] == "from extract" and lines[-2]["iteration"] is None
    assert lines[-1]["forced_extract"] is True and lines[-1]["iterations"] == 2


def test_concurrent_calls_never_interleave_lines(make_rlm, tmp_path):
    rlm, lm = make_rlm(STEPS, sub="hi", interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    trace = JsonlTrace(path).install(events)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            with dspy.context(lm=lm):
                assert rlm(text=f"text {i}").answer == "hi!"
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trace.close()
    assert errors == []
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in lines_of(path):  # every line is whole JSON
        runs.setdefault(line["run_id"], []).append(line)
    assert len(runs) == 6
    for lines in runs.values():
        assert lines[0]["stage"] == "run_start" and lines[-1]["stage"] == "run_end"
        assert len(lines) == 1 + 4 * 4 + 1 + 1  # start, 4 iterations of 4 stages, 1 tool call, end
        assert all(line["dt_prev_s"] >= 0 for line in lines)


def test_unicode_line_separators_stay_inside_their_line(make_rlm, tmp_path):
    rlm, lm = make_rlm(["print('a\\u2028b\\x85c\\u2029d')", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    JsonlTrace(path).install(events)
    with dspy.context(lm=lm):
        rlm(text="x")
    lines = lines_of(path)  # str.splitlines() would split a raw U+2028, U+0085 or U+2029
    (output,) = [line["result_preview"] for line in lines if line["stage"] == "post_execution"][:1]
    assert output == "a\u2028b\x85c\u2029d"


def test_values_that_are_not_json_are_previewed():
    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    assert preview(Opaque(), 50) == "<unrepresentable Opaque>"
    assert preview({"a": {1, 2}}, 50) == "{'a': {1, 2}}"
    assert preview("y" * 30, 20) == "y" * 20 + "… [+10 chars]"


def test_a_file_object_is_written_and_left_open(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='a')"])
    events = rlm_events.instrument(rlm)
    buffer = io.StringIO()
    trace = JsonlTrace(buffer).install(events)
    with dspy.context(lm=lm):
        rlm(text="x")
    trace.close()
    assert not buffer.closed
    assert json.loads(buffer.getvalue().splitlines()[0])["stage"] == "run_start"
    with dspy.context(lm=lm):  # after close(): dropped, and the run is unaffected
        assert rlm(text="x").answer == "a"
    assert buffer.getvalue().count("\n") == 6


def test_bad_arguments_are_refused_at_construction(tmp_path):
    with pytest.raises(TypeError, match="path or an open text file"):
        JsonlTrace(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preview_chars"):
        JsonlTrace(io.StringIO(), preview_chars=0)
    with pytest.raises(FileNotFoundError):
        JsonlTrace(tmp_path / "missing" / "trace.jsonl")


# -- progress -------------------------------------------------------------------------------------------------


def test_progress_prints_plain_lines_when_not_a_terminal(make_rlm):
    rlm, lm = make_rlm(STEPS, sub="hi", max_iters=6)
    events = rlm_events.instrument(rlm)
    out = io.StringIO()
    tap = ProgressTap(out).install(events)
    assert tap.live is False
    with dspy.context(lm=lm):
        rlm(text="abc")
    rlm_events.flush()  # the progress tap is queued
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    run = lines[0][:10]
    assert all(line.startswith(run) for line in lines)
    assert [line.split(" | ")[0][11:] for line in lines] == [
        "iteration 1/6 ok",
        "iteration 2/6 ok",
        "iteration 3/6 error",
        "iteration 4/6 submitted",
        "finished by SUBMIT",
    ]
    assert lines[-1].split(" | ")[1] == "4 iterations"
    assert all(line.endswith(" tokens total so far") for line in lines[:-1]) and lines[-1].endswith(" tokens")
    tokens = [int(line.rsplit(" | ", 1)[1].split(" tokens")[0].replace(",", "")) for line in lines]
    assert tokens == sorted(tokens) and tokens[-1] == sum(e["usage"]["total_tokens"] for e in lm.history)


def test_progress_reports_a_failed_call(make_rlm):
    rlm, lm = make_rlm(STEPS)
    events = rlm_events.instrument(rlm)
    out = io.StringIO()
    events.tap(ProgressTap(out, live=False))

    @events.middleware(Stage.PRE_EXECUTION)
    def refuse(ctx, next):
        raise ValueError("refused")

    with dspy.context(lm=lm), pytest.raises(ValueError):
        rlm(text="abc")
    rlm_events.flush()
    (line,) = out.getvalue().splitlines()  # no iteration finished: only the call's line
    assert line[11:].startswith("failed: ValueError: refused | 1 iteration | ")


def test_live_view_needs_rich(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    with pytest.raises(ImportError, match=r"rlm-events\[rich\]"):
        ProgressTap(live=True)
    assert ProgressTap(io.StringIO()).live is False  # auto mode falls back to plain lines


def test_live_view_runs_with_rich(make_rlm):
    pytest.importorskip("rich")
    rlm, lm = make_rlm(STEPS, sub="hi")
    events = rlm_events.instrument(rlm)
    out = io.StringIO()
    tap = ProgressTap(out, live=True).install(events)
    with dspy.context(lm=lm):
        rlm(text="abc")
    rlm_events.flush()
    assert tap._live is None  # stopped once no call runs
    assert "finished by SUBMIT | 4 iterations" in out.getvalue()
    assert "iteration 1/" not in out.getvalue()  # iterations are drawn live, not logged
