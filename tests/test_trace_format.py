"""The trace format: every record the writer produces on real runs conforms to the schema, and the reader
round-trips what the writer wrote."""

from __future__ import annotations

import io
import json
import typing
from pathlib import Path
from typing import Any

import dspy
import pytest
from pydantic import BaseModel, ValidationError

import rlm_events
from rlm_events import Stage
from rlm_events.builtins import Budget
from rlm_events.trace import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    JsonlTrace,
    PreIterationRecord,
    RecordBase,
    RunStartRecord,
    json_schema,
    parse_record,
    read_trace,
    record_data,
)

STEPS = [
    ("Look.", "print(len(text))"),  # skipped by a middleware below: result_preview on pre_execution
    ("Ask.", "note = llm_query('say hi')\nprint(note)"),
    ("Break.", "1 / 0"),
    ("Done.", "SUBMIT(answer=note + '!')"),
]


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def written(make_rlm, tmp_path) -> Path:
    """A trace of real runs that reaches every stage and optional field: a skipped execution, a tool call, failed
    code, a submission, the extract fallback, a call that raised, and one metered by a Budget."""
    path = tmp_path / "trace.jsonl"
    with JsonlTrace(path, preview_chars=40) as trace:
        rlm, lm = make_rlm(STEPS, sub="hi", cost_per_1k_tokens=0.002)
        events = rlm_events.instrument(rlm)
        trace.install(events)

        @events.middleware(Stage.PRE_EXECUTION)
        def skip_first(ctx, next):
            if ctx.iteration == 0:
                ctx.skip("a middleware answered")
            return next(ctx)

        with dspy.context(lm=lm):
            assert rlm(text="abcdef").answer == "hi!"

        extracting, lm = make_rlm(["print('thinking')"], max_iters=2, extract={"answer": "from extract"})
        trace.install(rlm_events.instrument(extracting))
        with dspy.context(lm=lm):
            assert extracting(text="abc").answer == "from extract"

        failing, lm = make_rlm(STEPS)
        events = rlm_events.instrument(failing)
        Budget(max_tokens=10**9).install(events)
        trace.install(events)

        @events.middleware(Stage.PRE_ITERATION)
        def fail_second(ctx, next):
            if ctx.iteration == 1:
                raise RuntimeError("no budget left")
            return next(ctx)

        with dspy.context(lm=lm), pytest.raises(RuntimeError):
            failing(text="x" * 100)
    return path


def unknown_fields(record: BaseModel) -> list[str]:
    """Keys the schema does not document, in ``record`` and the models inside it."""
    found = list(record.model_extra or {})
    for name in type(record).model_fields:
        value = getattr(record, name)
        if isinstance(value, BaseModel):
            found += [f"{name}.{key}" for key in unknown_fields(value)]
    return found


def test_every_record_the_writer_produces_conforms_to_the_schema(written):
    lines = lines_of(written)
    seen: set[str] = set()
    for line in lines:
        record = parse_record(line, strict=True)  # no conversions: the types the writer wrote are the schema's
        assert type(record) is RECORD_TYPES[Stage(line["stage"])]
        assert unknown_fields(record) == [], line
        assert record_data(record) == line  # nothing the writer wrote is lost or added by the model
        seen.add(record.stage)
    assert seen == {stage.value for stage in Stage}  # the runs reached every stage

    starts = [parse_record(line) for line in lines if line["stage"] == "run_start"]
    assert [start.schema_version for start in starts if isinstance(start, RunStartRecord)] == [SCHEMA_VERSION] * 3
    pre = [line for line in lines if line["stage"] == "pre_execution"]
    assert [line.get("result_preview") for line in pre if line["skipped"]] == ["a middleware answered"]
    assert all("result_preview" not in line for line in pre if not line["skipped"])  # absent, not null
    ends = [line for line in lines if line["stage"] == "run_end"]
    assert [end["error"] for end in ends] == [None, None, "RuntimeError: no budget left"]
    assert all("usage" in line for line in lines)


def test_the_reader_round_trips_what_the_writer_wrote(written):
    lines = lines_of(written)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_run.setdefault(line["run_id"], []).append(line)

    trace = read_trace(written)
    assert trace.skipped_lines == 0 and trace.events == len(lines)
    assert list(trace.runs) == list(by_run)  # in order of their first record
    assert {run: [record_data(r) for r in records] for run, records in trace.runs.items()} == by_run
    with written.open(encoding="utf-8") as file:  # an open file reads the same
        assert read_trace(file) == trace


def test_a_truncated_last_line_is_skipped(written):
    whole = written.read_text(encoding="utf-8")
    last = whole.splitlines(keepends=True)[-1]
    written.write_text(whole[: -len(last)] + last[: len(last) // 2], encoding="utf-8")  # a crash mid-write
    trace = read_trace(written)
    assert trace.skipped_lines == 1
    assert trace.events == len(whole.splitlines()) - 1
    assert [r.stage for r in list(trace.runs.values())[-1]][-1] == "post_iteration"  # its run_end was cut short


def test_lines_that_break_the_schema_are_skipped_and_unknown_fields_kept():
    good = {
        "run_id": "r",
        "stage": "pre_iteration",
        "iteration": 0,
        "t_mono": 1.0,
        "t_wall": "2025-01-01T00:00:00.000000+00:00",
        "dt_prev_s": 0.0,
        "history_len": 0,
    }
    bad = [
        {**good, "stage": "mid_iteration"},  # no such stage
        {**good, "iteration": None},  # pre_iteration belongs to an iteration
        {key: value for key, value in good.items() if key != "history_len"},  # a field is missing
        {**good, "stage": "run_end", "iteration": None},  # run_end's fields are missing
        [good],
    ]
    newer = {**good, "added_later": {"x": 1}}
    text = "\n".join(json.dumps(line) for line in [good, *bad, newer]) + "\n\n"
    trace = read_trace(io.StringIO(text))
    assert trace.skipped_lines == len(bad)
    first, kept = trace.runs["r"]
    assert isinstance(first, PreIterationRecord) and first.history_len == 0
    assert kept.model_extra == {"added_later": {"x": 1}} and record_data(kept) == newer
    with pytest.raises(ValidationError):
        parse_record({**good, "iteration": "0"}, strict=True)
    assert parse_record({**good, "iteration": "0"}).iteration == 0  # reading converts what it safely can


def test_the_schema_documents_every_field_and_covers_every_stage():
    assert set(RECORD_TYPES) == set(Stage)
    models: list[type[BaseModel]] = [RecordBase, *RECORD_TYPES.values()]
    for stage, model in RECORD_TYPES.items():
        assert typing.get_args(model.model_fields["stage"].annotation) == (stage.value,)
        models += [
            arg
            for info in model.model_fields.values()
            for arg in (info.annotation, *typing.get_args(info.annotation))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
    for model in models:
        assert model.__doc__, model
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_the_json_schema_tells_records_apart_by_stage():
    schema = json_schema()
    assert set(schema["discriminator"]["mapping"]) == {stage.value for stage in Stage}
    run_start = schema["$defs"]["RunStartRecord"]
    assert "schema" in run_start["required"] and run_start["properties"]["stage"]["const"] == "run_start"


def test_the_old_import_paths_still_work():
    import rlm_events.taps
    import rlm_events.taps.jsonl
    import rlm_events.trace

    assert rlm_events.taps.JsonlTrace is rlm_events.taps.jsonl.JsonlTrace is rlm_events.trace.JsonlTrace
    assert rlm_events.taps.jsonl.SCHEMA == SCHEMA_VERSION
