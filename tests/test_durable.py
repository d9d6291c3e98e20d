"""Durable runs in one process: commits, resume after an interrupted call (same history, answer and usage; no LM
call or tool call repeated), divergence, record mismatches, leases, an unreachable store and fork.

A worker dying is simulated here by a tool raising a `BaseException` (the run is left `running`, as a killed
worker leaves it); tests/test_durable_workers.py kills real worker processes with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
import pydantic
import pytest
from conftest import REAL_INTERPRETER

import rlm_events
from rlm_events.builtins import Budget
from rlm_events.durable import (
    DivergenceError,
    Durable,
    LeaseLostError,
    PostgresStore,
    RecordMismatchError,
    RunFinishedError,
    RunLeasedError,
    SQLiteStore,
    StoreUnavailableError,
    UnknownRunError,
)
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm


class WorkerDied(BaseException):
    """What the test's tool raises to stop the call the way a dying worker does: nothing after it runs."""


class Tools:
    """A `lookup` tool counting the calls that reach it, which can die on a chosen key."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.die_on: str | None = None

    def lookup(self, key: str) -> str:
        """Look a key up."""
        if key == self.die_on:
            self.die_on = None
            raise WorkerDied(key)
        self.calls.append(key)
        return key.upper() * 2


STEPS = [
    "x = lookup(key='a')\nprint(x)",
    "y = lookup(key='b') + llm_query('hi')\nprint(y)",
    "z = lookup(key='c')\nprint(len(x + y + z))",
    "SUBMIT(answer=x + y + z)",
]


def make(
    tools: Tools,
    store: Any,
    *,
    interpreter: Callable[[], Any] = REAL_INTERPRETER,
    signature: str | type[dspy.Signature] = "text -> answer",
    **options: Any,
) -> tuple[dspy.RLM, Durable]:
    rlm = build_rlm(signature, max_iters=6, tools=[tools.lookup], interpreter_factory=interpreter)
    events = rlm_events.instrument(rlm)
    durable = Durable(store, **options).install(events)
    return rlm, durable


def died(tools: Tools, store: Any, steps: list[str], die_on: str, **options: Any) -> str:
    """The id of a durable run whose worker died in `lookup(die_on)`."""
    tools.die_on = die_on
    rlm, durable = make(tools, store, **options)
    with dspy.context(lm=ScriptedLM(steps, sub="SUB")), pytest.raises(WorkerDied):
        rlm(text="t")
    assert durable.last_run_id is not None
    return durable.last_run_id


def call(rlm: dspy.RLM, is_async: bool, **inputs: Any) -> Any:
    return asyncio.run(rlm.acall(**inputs)) if is_async else rlm(**inputs)


def resume(durable: Durable, run_id: str, is_async: bool) -> Any:
    return asyncio.run(durable.aresume(run_id)) if is_async else durable.resume(run_id)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", [REAL_INTERPRETER, InProcessInterpreter], ids=["real", "inprocess"])
def test_an_interrupted_run_resumes_as_if_uninterrupted(
    tmp_path: Path, is_async: bool, interpreter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    # The uninterrupted run, to compare with.
    tools = Tools()
    rlm, durable = make(tools, store, interpreter=interpreter)
    lm = ScriptedLM(STEPS, sub="SUB")
    with dspy.context(lm=lm):
        whole = call(rlm, is_async, text="t")
    whole_run = store.load(durable.last_run_id)
    assert whole_run.status == "done" and whole.answer == "AABBSUBCC"
    assert tools.calls == ["a", "b", "c"] and len(lm.history) == 5

    # The same run, dying in iteration 3 inside lookup('c'), after lookup('b') and llm_query returned.
    tools = Tools()
    tools.die_on = "c"
    rlm, durable = make(tools, store, interpreter=interpreter)
    first_lm = ScriptedLM(STEPS, sub="SUB")
    with dspy.context(lm=first_lm), pytest.raises(WorkerDied):
        call(rlm, is_async, text="t")
    run_id = durable.last_run_id
    assert run_id is not None and store.load(run_id).status == "running"
    assert tools.calls == ["a", "b"] and len(first_lm.history) == 4  # 3 actions and the sub call

    # Another worker (a fresh RLM and Durable) resumes it, and says what it repeats.
    tools.calls.clear()
    rlm, other = make(tools, store, interpreter=interpreter)
    second_lm = ScriptedLM(STEPS, sub="SUB")
    with dspy.context(lm=second_lm), caplog.at_level(logging.WARNING, logger="rlm_events.durable"):
        resumed = resume(other, run_id, is_async)
    assert f"resuming run {run_id} in iteration 3: its code comes from the record" in caplog.text
    # Nothing paid or side-effecting was repeated: iteration 3's code came from the record; only the tool call that
    # never returned and iteration 4's action were made.
    assert tools.calls == ["c"]
    assert len(second_lm.history) == 1
    assert resumed.answer == whole.answer
    assert resumed.trajectory == whole.trajectory
    finished = store.load(run_id)
    assert finished.status == "done"
    assert finished.outcome is not None and whole_run.outcome is not None
    assert finished.outcome["usage"]["tokens"] == whole_run.outcome["usage"]["tokens"]
    assert finished.outcome["usage"]["lm_calls"] == whole_run.outcome["usage"]["lm_calls"] == 5
    assert finished.outcome["iterations"] == whole_run.outcome["iterations"] == 4
    with pytest.raises(RunFinishedError, match="is done"):
        other.resume(run_id)


def test_budget_spend_is_restored_on_resume(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()
    tools.die_on = "c"
    rlm, durable = make(tools, store)
    Budget(max_iterations=10).install(rlm_events.instrumentation_of(rlm))  # type: ignore[arg-type]
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")), pytest.raises(WorkerDied):
        rlm(text="t")
    spent: list[Any] = []
    rlm, other = make(tools, store)
    events = rlm_events.instrumentation_of(rlm)
    assert events is not None
    Budget(max_iterations=10).install(events)
    events.tap(rlm_events.Stage.RUN_END, lambda ctx: spent.append(Budget.spent(ctx)), inline=True)
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")):
        other.resume(durable.last_run_id)  # type: ignore[arg-type]
    assert spent[0].iterations == 4
    assert spent[0].lm_calls == 5


def test_a_replayed_block_that_prints_something_else_is_a_divergence(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    steps = ["import random\nprint(random.random())", "y = lookup(key='b')\nprint(y)", "SUBMIT(answer=y)"]
    tools = Tools()
    run_id = died(tools, store, steps, "b")
    _rlm, other = make(tools, store)
    with dspy.context(lm=ScriptedLM(steps)), pytest.raises(DivergenceError, match="iteration 1 diverged") as info:
        other.resume(run_id)
    assert info.value.iteration == 1 and "printed" in info.value.detail
    assert store.load(run_id).status == "failed"
    # Allowed, the run goes on with what the code prints now (and the failed run can be resumed).
    _rlm, tolerant = make(tools, store, allow_divergence=True)
    with dspy.context(lm=ScriptedLM(steps)):
        assert tolerant.resume(run_id).answer == "BB"


class Doc(pydantic.BaseModel):
    title: str


class DocSignature(dspy.Signature):
    docs: list[Doc] = dspy.InputField()
    answer: str = dspy.OutputField()


def test_inputs_that_json_turned_into_dicts_are_typed_back_on_resume(tmp_path: Path) -> None:
    """A pydantic model input is recorded as JSON; a resumed run gets the model again, not the dict (which the
    replayed code would see, and print, differently). On the in-process interpreter: DSPy's LocalInterpreter takes
    JSON variables only."""
    store = SQLiteStore(tmp_path / "runs.db")
    steps = ["print(type(docs[0]).__name__, docs[0].title)", "y = lookup(key='b')\nprint(y)", "SUBMIT(answer=y)"]
    tools = Tools()
    tools.die_on = "b"
    rlm, durable = make(tools, store, interpreter=InProcessInterpreter, signature=DocSignature)
    with dspy.context(lm=ScriptedLM(steps)), pytest.raises(WorkerDied):
        rlm(docs=[Doc(title="T")])
    assert durable.last_run_id is not None
    assert store.load(durable.last_run_id).meta["inputs"] == {"docs": [{"title": "T"}]}
    _, other = make(tools, store, interpreter=InProcessInterpreter, signature=DocSignature)
    with dspy.context(lm=ScriptedLM(steps)):
        resumed = other.resume(durable.last_run_id)
    assert resumed.answer == "BB" and resumed.trajectory[0]["output"] == "Doc T"


def test_a_record_that_does_not_match_the_rlm_is_refused_naming_the_difference(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()
    run_id = died(tools, store, STEPS, "a")
    _, other = make(tools, store, signature="text -> summary")
    with pytest.raises(RecordMismatchError, match=r"signature is 'text -> answer'.*'text -> summary'"):
        other.resume(run_id)
    no_tools = build_rlm("text -> answer", max_iters=6, interpreter_factory=REAL_INTERPRETER)
    bare = Durable(store).install(rlm_events.instrument(no_tools))
    with pytest.raises(RecordMismatchError, match=r"tools are \['lookup'\], this RLM's are \[\]"):
        bare.resume(run_id)
    with pytest.raises(UnknownRunError, match="no durable run 'nope'"):
        bare.resume("nope")
    # The refused resumes left the lease free.
    _rlm, again = make(tools, store)
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert again.resume(run_id).answer == "AABBokCC"


def test_two_workers_never_hold_one_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    store.create("r1", {"inputs": {}}, "w1", 60)
    with pytest.raises(RunLeasedError, match="leased by worker 'w1'"):
        store.acquire("r1", "w2", 60)
    store.release("r1", "w1")
    assert store.acquire("r1", "w2", 60).lease_owner == "w2"
    with pytest.raises(LeaseLostError):
        store.append("r1", "w1", rlm_events.durable.Step(0, 0, "action", {}), 60)


def test_a_store_opened_while_another_process_holds_the_new_file_waits_for_it(tmp_path: Path) -> None:
    """SQLite answers the switch to WAL with 'database is locked' at once, without its busy handler, when another
    connection holds a write lock on a file still in rollback mode (two workers opening a new file together: a CI run
    failed on it). The store waits, like any other lock, up to busy_timeout."""
    import sqlite3
    import threading

    path = tmp_path / "runs.db"
    other = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE elsewhere (x)")
    released = threading.Timer(0.3, other.execute, ("COMMIT",))
    released.start()
    try:
        store = SQLiteStore(path, busy_timeout=10)
        store.create("r1", {"inputs": {}}, "w1", 60)
        assert store.load("r1").lease_owner == "w1"
        assert not released.is_alive()  # it really waited for the other writer
    finally:
        released.join()
        other.close()
    held = sqlite3.connect(str(tmp_path / "held.db"), isolation_level=None)
    held.execute("BEGIN IMMEDIATE")
    held.execute("CREATE TABLE elsewhere (x)")
    with pytest.raises(StoreUnavailableError, match="database is locked"):  # but not for ever
        SQLiteStore(tmp_path / "held.db", busy_timeout=0.2).ping()
    held.close()


def test_an_unreachable_store_fails_the_run_at_start_or_is_skipped_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-dir" / "runs.db"
    tools = Tools()
    rlm, _ = make(tools, missing)
    lm = ScriptedLM(STEPS)
    with dspy.context(lm=lm), pytest.raises(StoreUnavailableError, match=r"no-such-dir.*unable to open"):
        rlm(text="t")
    assert lm.history == [] and tools.calls == []  # failed before any LM or tool call
    rlm, _ = make(tools, missing, best_effort=True)
    with caplog.at_level(logging.WARNING, logger="rlm_events.durable"), dspy.context(lm=ScriptedLM(STEPS, sub="S")):
        assert rlm(text="t").answer == "AABBSCC"
        assert rlm(text="t").answer == "AABBSCC"
    assert sum("without durability" in r.getMessage() for r in caplog.records) == 1


def test_fork_replays_the_first_iterations_and_goes_on_with_new_code(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()
    rlm, durable = make(tools, store)
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")):
        rlm(text="t")
    parent = durable.last_run_id
    assert parent is not None
    child = durable.fork(parent, at=1, code="y = 'forked'\nprint(y)")
    stored = store.load(child)
    assert stored.parent == parent and stored.relation == "fork" and stored.status == "running"
    tools.calls.clear()
    lm = ScriptedLM(STEPS, sub="SUB")
    with dspy.context(lm=lm):
        forked = durable.resume(child)
    assert [e["output"] for e in forked.trajectory[:2]] == ["AA", "forked"]
    assert forked.answer == "AAforkedCC"
    assert tools.calls == ["c"]  # iteration 1's lookup('a') was replayed, not called
    with pytest.raises(ValueError, match="from 0 to 4"):
        durable.fork(parent, at=9)
    # A changed history: the LM reads the edited output of iteration 1.
    edited = durable.fork(parent, at=1, history={0: {"output": "EDITED"}})
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")):
        assert durable.resume(edited).trajectory[0]["output"] == "EDITED"


def test_the_trace_links_resumed_and_forked_runs_to_their_parent(tmp_path: Path) -> None:
    from rlm_events.trace import JsonlTrace

    store = SQLiteStore(tmp_path / "runs.db")
    path = tmp_path / "trace.jsonl"
    tools = Tools()
    tools.die_on = "c"
    with JsonlTrace(path) as trace:
        rlm, durable = make(tools, store)
        trace.install(rlm_events.instrumentation_of(rlm))  # type: ignore[arg-type]
        with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")), pytest.raises(WorkerDied):
            rlm(text="t")
        run_id = durable.last_run_id
        assert run_id is not None
        with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")):
            durable.resume(run_id)
            durable.resume(durable.fork(run_id, at=2))
    starts = [
        line for line in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if line["stage"] == "run_start"
    ]
    assert starts[0]["run_id"] == run_id and starts[0]["durable"] == {"run_id": run_id}
    assert starts[1]["durable"] == {"run_id": run_id, "relation": "resume", "parent": run_id, "replayed": 2}
    assert starts[2]["durable"]["relation"] == "fork" and starts[2]["durable"]["parent"] == run_id
    assert starts[2]["durable"]["replayed"] == 2
    page = rlm_events.trace.render_html(rlm_events.trace.read_trace(path))
    assert "durableText" in page and "suspended: waits for a decision" in page


def test_resume_in_the_sandbox(tmp_path: Path) -> None:
    from rlm_events.sandbox import Sandboxed, SandboxUnavailable

    try:
        factory = Sandboxed()
    except SandboxUnavailable as error:
        if os.environ.get("RLM_EVENTS_REQUIRE_SANDBOX") == "1":
            raise
        pytest.skip(f"no sandbox here: {error}")
    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()
    run_id = died(tools, store, STEPS, "c", interpreter=factory)
    assert tools.calls == ["a", "b"]
    tools.calls.clear()
    _rlm, other = make(tools, store, interpreter=factory)
    lm = ScriptedLM(STEPS, sub="SUB")
    with dspy.context(lm=lm):
        assert other.resume(run_id).answer == "AABBSUBCC"
    assert tools.calls == ["c"] and len(lm.history) == 1


def test_a_crash_before_the_code_was_committed_repeats_that_one_lm_call_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()

    def dies_in_iteration_two(ctx: Any, next: Any) -> Any:  # the worker dies right after the LM answered
        if ctx.iteration == 1:
            raise WorkerDied()
        return next(ctx)

    rlm, durable = make(tools, store)
    events = rlm_events.instrumentation_of(rlm)
    assert events is not None
    events.use(rlm_events.Stage.PRE_ITERATION, dies_in_iteration_two)
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")), pytest.raises(WorkerDied):
        rlm(text="t")
    run_id = durable.last_run_id
    assert run_id is not None
    _rlm, other = make(tools, store)
    lm = ScriptedLM(STEPS, sub="SUB")
    with dspy.context(lm=lm), caplog.at_level(logging.WARNING, logger="rlm_events.durable"):
        assert other.resume(run_id).answer == "AABBSUBCC"
    assert "during the LM call of iteration 2, that one call is made again" in caplog.text
    assert len(lm.history) == 4 and tools.calls == ["a", "b", "c"]  # iterations 2-4 and the sub call; 'a' once


def test_the_benchmark_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "durable.py"
    done = subprocess.run(
        [sys.executable, str(script), "--iterations", "3", "--repeats", "1", "--postgres", ""],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Durable(SQLiteStore)" in done.stdout and "ms/iteration" in done.stdout


def test_a_worker_whose_lease_was_taken_over_stops_and_writes_nothing_more(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()
    rlm, durable = make(tools, store, lease_seconds=0.001)

    def take_over(ctx: Any, next: Any) -> Any:  # another worker takes the run over once this one's lease expired
        if ctx.iteration == 1:
            time.sleep(0.05)
            store.acquire(durable.last_run_id, "other-worker", 60)  # type: ignore[arg-type]
        return next(ctx)

    events = rlm_events.instrumentation_of(rlm)
    assert events is not None
    events.use(rlm_events.Stage.PRE_ITERATION, take_over)
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")), pytest.raises(LeaseLostError, match="lost its lease"):
        rlm(text="t")
    run = store.load(durable.last_run_id)  # type: ignore[arg-type]
    assert run.lease_owner == "other-worker" and run.status == "running"
    assert [(s.iteration, s.kind) for s in run.steps] == [(0, "action"), (0, "tool"), (0, "iteration")]


def test_a_postgres_store_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the postgres extra, the store is unavailable with the reason and the command that installs it."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(StoreUnavailableError, match=r"needs psycopg 3.*pip install 'rlm-events\[postgres\]'"):
        PostgresStore("postgresql://user@127.0.0.1:1/db").load("run")
