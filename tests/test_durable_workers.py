"""Durable runs across worker processes, on SQLite and on a real PostgreSQL server: a worker killed with SIGKILL
in the middle of an LM call is resumed by another, which repeats that one call and nothing else (counted at the
LM server, reached through DSPy's real LiteLLM client, and at the tool); concurrent runs never see each other's
checkpoints.

PostgreSQL: set RLM_EVENTS_TEST_POSTGRES to a DSN (`.ci/run` starts a server and sets it); without it these tests
skip, unless RLM_EVENTS_REQUIRE_POSTGRES=1 (then they fail). RLM_EVENTS_SKIP_WORKER_TESTS=1 skips the module (these
tests start several Python processes: `.ci/run` runs them in two environments, not all)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_events.durable import open_store
from rlm_events.local_openai import LocalOpenAIServer, Reply

if os.environ.get("RLM_EVENTS_SKIP_WORKER_TESTS") == "1":
    pytest.skip(
        "RLM_EVENTS_SKIP_WORKER_TESTS=1: .ci/run runs these with two DSPy releases only", allow_module_level=True
    )

WORKER = '''
import json, os, sys
import dspy
import rlm_events
from rlm_events.durable import Durable
from rlm_events.testing import InProcessInterpreter, build_rlm

store, api_base, mode, arg, log = sys.argv[1:6]


def lookup(key: str) -> str:
    """Look a key up."""
    with open(log, "a", encoding="utf-8") as file:
        file.write(key + "\\n")
    return key.upper() * 2


rlm = build_rlm("text -> answer", max_iters=6, tools=[lookup],
                interpreter_factory=getattr(dspy, "LocalInterpreter", InProcessInterpreter))
durable = Durable(store, lease_seconds=float(os.environ["LEASE"])).install(rlm_events.instrument(rlm))
lm = dspy.LM("openai/scripted", api_base=api_base, api_key="local", cache=False, num_retries=0)
with dspy.context(lm=lm):
    prediction = rlm(text=arg) if mode == "run" else durable.resume(arg, wait=60)
print(json.dumps({"answer": prediction.answer, "trajectory": prediction.trajectory, "run_id": durable.last_run_id}))
'''

STEPS = [
    "x = lookup(key='a') + text\nprint(x)",
    "y = lookup(key='b') + llm_query('hi')\nprint(y)",
    "z = lookup(key='c')\nprint(len(x + y + z))",
    "SUBMIT(answer=x + y + z)",
]
ACTION_3 = 3  # the request index of iteration 3's action: requests 0, 1 are actions, 2 is llm_query


def _postgres() -> str | None:
    dsn = os.environ.get("RLM_EVENTS_TEST_POSTGRES")
    if not dsn and os.environ.get("RLM_EVENTS_REQUIRE_POSTGRES") == "1":
        pytest.fail("RLM_EVENTS_REQUIRE_POSTGRES=1 but RLM_EVENTS_TEST_POSTGRES (a PostgreSQL DSN) is not set")
    return dsn


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    dsn = _postgres()
    if not dsn:
        pytest.skip("RLM_EVENTS_TEST_POSTGRES is not set (a PostgreSQL DSN); .ci/run sets it")
    return dsn


class Workers:
    def __init__(self, tmp_path: Path, store_url: str) -> None:
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER, encoding="utf-8")
        self.log = tmp_path / "tools.log"
        self.store_url = store_url

    def start(self, server: LocalOpenAIServer, mode: str, arg: str, *, lease: float = 60.0) -> subprocess.Popen[str]:
        env = {**os.environ, "LEASE": str(lease), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        command = [sys.executable, "-W", "ignore", str(self.script), self.store_url, server.base_url, mode, arg]
        return subprocess.Popen(
            [*command, str(self.log)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @staticmethod
    def result(process: subprocess.Popen[str]) -> dict[str, Any]:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def tools(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").split() if self.log.exists() else []


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_worker_killed_mid_run_is_resumed_by_another(
    tmp_path: Path, store_url: str, openai_server: Callable[..., LocalOpenAIServer]
) -> None:
    workers = Workers(tmp_path, store_url)
    tag = f"t-{uuid.uuid4().hex[:8]}"
    # The uninterrupted run, to compare with.
    whole_server = openai_server(STEPS, sub="SUB")
    whole = workers.result(workers.start(whole_server, "run", tag))
    assert whole["answer"] == f"AA{tag}BBSUBCC"
    assert workers.tools() == ["a", "b", "c"] and len(whole_server.requests) == 5
    workers.log.unlink()

    # A worker whose LM call of iteration 3 never returns: killed in the middle of it.
    server = openai_server(STEPS, sub="SUB", faults={ACTION_3: Reply(delay=600)})
    doomed = workers.start(server, "run", tag, lease=2.0)
    _wait_for(lambda: len(server.requests) > ACTION_3 or doomed.poll() is not None, "the worker's third LM call")
    assert doomed.poll() is None, doomed.communicate()[1][-3000:]
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    store = open_store(store_url)
    run = next(r for r in store.runs() if r.meta["inputs"] == {"text": tag} and r.run_id != whole["run_id"])
    assert run.status == "running" and run.iteration == 2 and run.lease_owner is not None
    assert workers.tools() == ["a", "b"]

    # Another worker resumes it once the dead worker's lease expired.
    resumed = workers.result(workers.start(server, "resume", run.run_id))
    assert resumed["run_id"] == run.run_id
    assert resumed["answer"] == whole["answer"] and resumed["trajectory"] == whole["trajectory"]
    # Only the LM call the killed worker was in is repeated; no tool call is.
    assert len(server.requests) == len(whole_server.requests) + 1
    assert workers.tools() == ["a", "b", "c"]
    done, reference = store.load(run.run_id), store.load(whole["run_id"])
    assert done.status == "done" and done.outcome is not None and reference.outcome is not None
    for key in ("lm_calls", "prompt_tokens", "completion_tokens", "tokens"):
        assert done.outcome["usage"][key] == reference.outcome["usage"][key], key


def test_concurrent_runs_never_see_each_others_checkpoints(
    tmp_path: Path, store_url: str, openai_server: Callable[..., LocalOpenAIServer]
) -> None:
    workers = Workers(tmp_path, store_url)
    server = openai_server(STEPS, sub="SUB")
    tags = [f"c-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    processes = [workers.start(server, "run", tag) for tag in tags]
    results = [workers.result(p) for p in processes]
    store = open_store(store_url)
    for tag, result in zip(tags, results, strict=True):
        assert result["answer"] == f"AA{tag}BBSUBCC"
        run = store.load(result["run_id"])
        assert run.meta["inputs"] == {"text": tag} and run.status == "done"
        outputs = [s.data["entry"]["output"] for s in run.steps if s.kind == "iteration"]
        assert outputs[0] == f"AA{tag}" and len(outputs) == 4
        assert [s.seq for s in run.steps] == list(range(len(run.steps)))
        assert all(s.data["name"] == "lookup" or s.data["name"] == "llm_query" for s in run.steps if s.kind == "tool")
