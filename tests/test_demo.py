"""``python -m rlm_events demo``: a real dspy.RLM run end to end, with the guard, budget, progress and trace on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rlm_events.__main__ import main
from rlm_events.demo import bundled_text, expected_counts

STAGE_LINE = re.compile(
    r"^\[([0-9a-f]{8})\] (run_start|pre_iteration|pre_execution|post_execution|post_iteration|"
    r"tool_call|extract|run_end)\b"
)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_runs_end_to_end(tmp_path, capsys):
    trace = tmp_path / "demo.jsonl"
    assert main(["demo", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    want = expected_counts(bundled_text())

    assert f"answer: todo={want['TODO']} fixme={want['FIXME']} (expected {want['TODO']}/{want['FIXME']})" in out
    assert f"python -m rlm_events view {trace} --open" in out
    assert "code guard" in out and "budget" in out

    lines = lines_of(trace)
    printed = [STAGE_LINE.match(line) for line in out.splitlines()]
    stages = [m.group(2) for m in printed if m]
    assert stages == [line["stage"] for line in lines]  # one printed line per stage event, as they fired
    assert {m.group(1) for m in printed if m} == {lines[0]["run_id"][:8]}

    # the guard at work: step 2 reaches for subprocess, is refused, step 3 recovers in plain Python
    assert re.search(r"pre_execution +#2 import subprocess +\[not run", out)
    post = [line for line in lines if line["stage"] == "post_execution"]
    assert post[1]["is_error"] and post[1]["result_preview"].startswith("[Error] CodeGuard refused")
    assert "subprocess" in post[1]["result_preview"]
    assert not post[2]["is_error"] and post[2]["result_preview"].startswith("82 hits")

    # progress: one line per finished iteration, then the call
    assert re.search(r"iteration 2/8 error \| [\d.]+ s \| [\d,]+ tokens, \$0\.\d{4} total so far$", out, re.M)
    assert re.search(r"iteration 6/8 submitted", out)
    assert re.search(r"finished by SUBMIT \| 6 iterations \| [\d.]+ s \| [\d,]+ tokens, \$0\.\d{4}$", out, re.M)

    end = lines[-1]
    assert end["stage"] == "run_end" and end["error"] is None and end["iterations"] == 6
    assert end["prediction"]["todo"] == str(want["TODO"]) and end["prediction"]["fixme"] == str(want["FIXME"])
    assert end["usage"]["lm_calls"] == 7 and end["usage"]["total_tokens"] > 0  # 6 actions + 1 llm_query


def test_demo_writes_a_fresh_trace_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    assert main(["demo"]) == 0
    capsys.readouterr()
    runs = {line["run_id"] for line in lines_of(tmp_path / "rlm-trace.jsonl")}
    assert len(runs) == 1  # the second demo replaced the first one's trace


def test_demo_records_an_mlflow_trace(tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package")
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["demo", "--mlflow", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri {store}" in out
    trace_id = re.search(r"MLflow trace (tr-[0-9a-f]+) in experiment 'rlm-events demo'", out).group(1)  # type: ignore[union-attr]

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        trace = mlflow.get_trace(trace_id)
    finally:
        mlflow.set_tracking_uri(previous)
    spans = trace.data.spans
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "RLM.forward" and root.attributes["rlm.stop_reason"] == "submit"
    iterations = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
    assert [s.name for s in iterations] == [f"iteration {n}" for n in range(1, 7)]
    refused = [s for s in spans if s.name == "execute_code" and s.parent_id == iterations[1].span_id]
    assert [e.name for e in refused[0].events if e.name == "guard_refusal"] == ["guard_refusal"]
    (tool,) = [s for s in spans if s.name == "llm_query"]
    assert [s.name for s in spans if s.parent_id == tool.span_id]  # autolog's sub-LM span, under the tool
    assert (tmp_path / "rlm-trace.jsonl").is_file()


def test_demo_tracking_uri_needs_mlflow(capsys):
    assert main(["demo", "--tracking-uri", "sqlite:///x.db"]) == 2
    assert "--tracking-uri is for --mlflow" in capsys.readouterr().err
