"""Speculate reads the REPL of the library's own sandbox (`Sandboxed`): a `read` request of the worker's protocol,
read only, plain data only; loops over REPL variables are planned there as under `dspy.LocalInterpreter`."""

from __future__ import annotations

import threading
import time
from typing import Any

import dspy
import pytest
from test_sandbox import needs_sandbox
from test_speculate import GLOBALS_SNAPSHOT, TRAP_CLASSES

import rlm_events
from rlm_events._ast import LIMITS
from rlm_events.builtins import Speculate
from rlm_events.sandbox import Sandboxed, SandboxedInterpreter
from rlm_events.sandbox._reader import NotReadable, read_variables
from rlm_events.speculate.repl import SandboxReader, reader_for, unsupported_reason
from rlm_events.testing import ScriptedLM, build_rlm

pytestmark = needs_sandbox

TRAPS = (
    TRAP_CLASSES + "class D(dict):\n"
    "    def items(self):\n        touched.append('D.items'); return dict.items(self)\n"
    "chunks = ['a', 'b']\nnested = {'k': [1, 2.5, None, True], 'pair': (1, 'x')}\nt = Trap()\nl = L([1])\n"
    "s = S('x')\nd = D(a=1)\nbig = 10 ** 100\nnan = float('nan')\nkeyed = {S('k'): 1}\n"
    "print('ready')"
)
NAMES = ["chunks", "nested", "t", "l", "s", "d", "big", "nan", "keyed", "missing"]


def test_the_sandbox_read_gives_plain_values_and_runs_no_code_of_theirs():
    repl = SandboxedInterpreter()
    try:
        assert read_variables(repl, ["x"], max_items=10, max_chars=10, max_total=100) == ({}, frozenset())
        assert not SandboxReader(repl).started()  # not started by a read
        assert repl.execute(TRAPS) == "ready"
        before = repl.execute(GLOBALS_SNAPSHOT)
        repl.execute("touched.clear()")
        reader = SandboxReader(repl)
        assert reader.started() and reader.kind == "sandbox"
        for _ in range(3):
            values, bound = reader.read(NAMES, LIMITS)
        assert values == {"chunks": ["a", "b"], "nested": {"k": [1, 2.5, None, True], "pair": (1, "x")}}
        assert bound == set(NAMES) - {"missing"}
        assert repl.execute("touched") == []  # no hook of any trap ran
        assert repl.execute(GLOBALS_SNAPSHOT) == before  # every global bound exactly as before
        # Bounds: a string longer than max_chars, or a list longer than max_items, is left out (bound, not read).
        values, bound = read_variables(repl, ["chunks", "nested"], max_items=1, max_chars=100, max_total=100)
        assert values == {} and bound == {"chunks", "nested"}
    finally:
        repl.shutdown()


def test_a_read_while_an_execution_runs_is_refused_and_changes_nothing():
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    repl = SandboxedInterpreter(tools={"slow": slow})
    try:
        repl.execute("x = [1, 2]")
        running = threading.Thread(target=repl.execute, args=("y = slow(0.5)",))
        running.start()
        time.sleep(0.2)
        with pytest.raises(NotReadable, match="an execution is running"):
            read_variables(repl, ["x"], max_items=10, max_chars=10, max_total=100)
        running.join()
        assert repl.execute("(x, y)") == [[1, 2], "slept"]
    finally:
        repl.shutdown()


def test_a_read_answered_too_late_is_dropped_and_the_next_execution_keeps_the_worker(monkeypatch):
    # The read gives up at once (a timeout of 0) while the worker still copies a large list; its answer, tagged
    # with the read's tag, comes after the host stopped waiting and is dropped: the next execution keeps the worker
    # and every variable.
    from rlm_events.sandbox import _reader

    repl = SandboxedInterpreter()
    try:
        repl.execute("x = list(range(200_000))\nmarker = 'kept'")
        monkeypatch.setattr(_reader, "READ_TIMEOUT", 0.0)
        with pytest.raises(NotReadable, match="did not answer the read in time"):
            read_variables(repl, ["x"], max_items=300_000, max_chars=10, max_total=10_000_000)
        assert repl.execute("print(marker, len(x))") == "kept 200000"
        assert repl.execute("marker") == "kept"
    finally:
        repl.shutdown()


def test_sandboxed_interpreters_are_readable_and_pick_the_sandbox_reader():
    assert unsupported_reason(SandboxedInterpreter) is None
    repl = SandboxedInterpreter()
    try:
        assert isinstance(reader_for(repl), SandboxReader)
    finally:
        repl.shutdown()


def test_a_loop_over_a_sandbox_variable_is_planned_and_claimed():
    steps = [
        "chunks = ['one', 'two', 'three']\nprint(len(chunks))",
        "notes = [llm_query(f'About {c}') for c in chunks]\nprint(notes)",
        "SUBMIT(answer=' | '.join(notes))",
    ]

    def sub(prompt: str) -> str:
        time.sleep(0.05)
        return prompt.upper()

    def once(speculate: Speculate | None) -> tuple[Any, Any]:
        rlm = build_rlm("text -> answer", max_iters=4, interpreter_factory=Sandboxed())
        events = rlm_events.instrument(rlm)
        seen: dict[str, Any] = {}
        if speculate is not None:
            speculate.install(events)
        events.tap(["run_end"], lambda ctx: seen.update(stats=Speculate.stats(ctx)), inline=True)
        with dspy.context(lm=ScriptedLM(steps, sub=sub)):
            prediction = rlm(text="t")
        return prediction, seen.get("stats")

    bare, _ = once(None)
    fast, stats = once(Speculate())
    assert [(e["code"], e["output"]) for e in fast.trajectory] == [(e["code"], e["output"]) for e in bare.trajectory]
    assert stats.repl == "sandbox" and stats.repl_reads >= 1
    assert stats.claimed + stats.cancelled == 3 and stats.wasted == 0
