"""The overhead benchmark keeps working: ``benchmarks/overhead.py --quick`` on real RLMs, and the shape of its output.

No timing is asserted here (the figures come from a real run of the full benchmark, see the README's Overhead
section); what is asserted is that every configuration runs the same real workload, that the report has every
figure, and that nothing leaks (contexts, runs, signal receivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import dspy
import pytest
from dspy.primitives.repl_types import REPLHistory
from pydantic import BaseModel, ValidationError

import rlm_events
from rlm_events import PreExecutionContext, PreIterationContext, Run, Stage, StageContext, snapshot
from rlm_events._fast import blinker as fast_blinker
from rlm_events.context import CONTEXT_TYPES
from rlm_events.signals import BY_STAGE
from rlm_events.testing import InProcessInterpreter

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "overhead.py"
CONFIG_KEYS = [
    "bare",
    "idle",
    "detached",
    "busy",
    "floor",
    "builtins",
    "dspy_callback",
    "reference",
    "idle_stages",
    "compat_hooks",
    "reference_package",
]
DISPATCH_FIELDS = {"name", "us", "target_us", "met"}


@pytest.fixture(scope="module")
def overhead() -> ModuleType:
    spec = importlib.util.spec_from_file_location("overhead_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _builtins_importable() -> bool:
    try:
        from rlm_events.builtins import Budget, CodeGuard  # noqa: F401
        from rlm_events.trace import JsonlTrace  # noqa: F401
    except ImportError:
        return False
    return True


def _floor_runs() -> bool:
    """Whether the dispatch floor runs here: it copies DSPy 3.4.1's loop body."""
    from rlm_events._patch.loop_body import source_release

    return source_release(dspy.RLM._execute_iteration) == "3.4.1"


def check_loop(loop: dict, interpreter: str, iterations: int) -> None:
    assert loop["interpreter"] == interpreter
    assert loop["iterations"] == iterations and loop["rounds"] >= 1
    assert loop["clock"] in ("cpu", "wall") and loop["bare_us_per_iteration"] > 0
    assert [row["key"] for row in loop["configs"]] == CONFIG_KEYS
    for row in loop["configs"]:
        if row["key"] == "builtins" and not _builtins_importable():
            assert not row["available"] and "not importable" in row["note"]
            continue
        if row["key"] == "reference_package" and not row["available"]:  # an optional package, for comparison
            assert "dspy-rlm-hooks" in row["note"]
            continue
        if row["key"] == "floor" and not _floor_runs():
            assert not row["available"] and f"DSPy {dspy.__version__}" in row["note"], row
            continue
        assert row["available"], row
        assert row["note"] == "", row  # e.g. the DSPy callback observed something
        assert row["median_ms"] > 0 and row["median_wall_ms"] > 0 and row["ratio"] > 0
        assert isinstance(row["added_us_per_iteration"], float)
        assert row["met"] is None  # a quick run is never judged against the targets
    bare = loop["configs"][0]
    assert bare["ratio"] == 1.0 and bare["added_us_per_iteration"] == 0.0


def test_quick_run_on_real_rlms_reports_every_figure_and_leaks_nothing(overhead, make_rlm, tmp_path, capsys):
    out = tmp_path / "overhead.json"
    report = overhead.main(["--quick", "--json", str(out)], make_rlm=make_rlm)

    assert json.loads(out.read_text()) == report
    quick = overhead.QUICK
    loops = report["loops"]
    check_loop(loops[0], "InProcessInterpreter", quick.iterations)
    assert loops[0]["clock"] == "cpu"
    if len(loops) > 1:  # dspy.LocalInterpreter exists (DSPy 3.4+)
        check_loop(loops[1], "LocalInterpreter", quick.iterations)
        assert loops[1]["clock"] == "wall"

    memory = report["memory"]
    assert memory["runs"] == quick.memory_runs and memory["max_rss_bytes"] > 0
    for key in ("bare", "busy_tapped"):
        assert memory[key]["peak_bytes"] >= memory[key]["growth_bytes"] >= 0
        assert memory[key]["contexts_alive_between_calls"] == 0
        assert memory[key]["runs_alive_between_calls"] == 0
    assert memory["left_after_teardown"] == {"contexts": 0, "runs": 0, "receivers": 0}

    assert len(report["dispatch"]) >= 2
    for row in report["dispatch"]:
        assert set(row) == DISPATCH_FIELDS and row["us"] > 0
    assert report["environment"]["dspy"] and len(report["environment"]["load_avg_before"]) == 3
    assert report["command"] == f"python benchmarks/overhead.py --quick --json {out}"

    table = capsys.readouterr().out
    for row in loops[0]["configs"]:
        assert row["label"] in table
    assert "Memory:" in table and "Stage dispatch" in table and "(not judged)" in table


def test_a_configuration_that_changes_the_run_is_refused(overhead, make_rlm, tmp_path):
    """A configuration is only comparable if it runs the same workload: one that stops the loop early fails."""

    def stop_early(rlm, tmp):
        @rlm_events.instrument(rlm).middleware(Stage.POST_ITERATION)
        def stop(ctx, next):
            ctx.stop = True
            return next(ctx)

        return overhead.Setup()

    configs = [overhead.CONFIGS[0], overhead.Config("stops", "stops after one iteration", stop_early)]
    with pytest.raises(AssertionError, match="the workload changed"):
        overhead.loop_benchmark(
            make_rlm, InProcessInterpreter, iterations=3, rounds=1, warmup=0, clock="cpu", tmp=tmp_path, configs=configs
        )


def test_runs_as_a_script(tmp_path):
    out = tmp_path / "overhead.json"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-local", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [loop["interpreter"] for loop in report["loops"]] == ["InProcessInterpreter"]
    assert "InProcessInterpreter: 3 iterations per call" in done.stdout
    assert "Stage dispatch" in done.stdout


# -- the hot-path shortcuts the benchmark led to keep their semantics ---------------------------------------------


def _pydantic_construct(cls, **values):
    return BaseModel.model_construct.__func__(cls, **values)


@pytest.mark.parametrize("cls", [*CONTEXT_TYPES.values(), Run], ids=lambda c: c.__name__)
def test_fast_model_construct_builds_what_pydantic_builds(cls, make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    run = _pydantic_construct(Run, id="r", module=rlm, started_at=datetime.now(timezone.utc), state={})
    given = {"id": "r", "module": rlm, "started_at": run.started_at} if cls is Run else {"stage": cls.STAGE, "run": run}
    given["not_a_field"] = 1  # pydantic ignores unknown keywords
    fast, reference = cls.model_construct(**given), _pydantic_construct(cls, **given)

    assert type(fast) is cls
    assert list(fast.__dict__.items()) == list(reference.__dict__.items())  # same values, same field order
    assert fast.model_fields_set == reference.model_fields_set and "not_a_field" not in fast.model_fields_set
    assert fast.__pydantic_extra__ is None and fast.__pydantic_private__ is None
    assert fast == reference and repr(fast) == repr(reference)
    for name, value in fast.__dict__.items():  # default factories run per instance: nothing shared
        if isinstance(value, (dict, list)):
            assert value is not cls.model_construct(**given).__dict__[name]


def test_fast_model_construct_keeps_validated_assignment(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    run = Run.model_construct(id="r", module=rlm, started_at=datetime.now(timezone.utc))
    ctx = PreExecutionContext.model_construct(stage=Stage.PRE_EXECUTION, run=run, code="x = 1", history=REPLHistory())
    assert run.state == {} and ctx.input_args == {} and ctx.result is None
    with pytest.raises(ValidationError, match="code"):
        ctx.code = 3
    with pytest.raises(ValidationError, match="frozen"):
        run.id = "other"


def test_snapshot_is_a_frozen_copy():
    run = Run.model_construct(id="r", module=None, started_at=datetime.now(timezone.utc))
    ctx = PreIterationContext.model_construct(
        stage=Stage.PRE_ITERATION, run=run, history=REPLHistory(), variables=[], extra_vars={"a": 1}
    )
    copy = snapshot(ctx)
    assert isinstance(copy, PreIterationContext) and copy.__dict__ == ctx.__dict__
    assert copy.model_fields_set == ctx.model_fields_set
    copy.extra_vars["b"] = 2  # a copy: the run's context does not change
    ctx.variables.append("later")  # and later changes to the context do not show in the snapshot
    assert ctx.extra_vars == {"a": 1} and copy.variables == []
    with pytest.raises(ValidationError, match="frozen"):
        copy.python_code = "x = 1"


def test_plan_wants_counts_only_the_receivers_that_hear_the_sender(make_rlm):
    (one, _), (other, _) = make_rlm(["SUBMIT(answer='ok')"]), make_rlm(["SUBMIT(answer='ok')"])
    plan = rlm_events.instrument(one).plan
    rlm_events.instrument(other)
    signal = BY_STAGE[Stage.PRE_EXECUTION]

    def receiver(sender, ctx):
        pass

    assert plan.idle_for(one) and not plan.wants(Stage.PRE_EXECUTION, one)
    signal.connect(receiver, sender=other)
    try:
        assert plan.wants(Stage.PRE_EXECUTION) and not plan.idle  # without a sender: any receiver counts
        assert not plan.wants(Stage.PRE_EXECUTION, one) and plan.idle_for(one)
        assert plan.wants(Stage.PRE_EXECUTION, other) and not plan.idle_for(other)
        signal.disconnect(receiver, sender=other)  # blinker keeps the receiver in signal.receivers
        # (and the sender's empty bucket, which blinker's has_receivers_for() counts: the fallback's wants() says yes)
        assert signal.receivers and plan.idle_for(other)
        assert plan.wants(Stage.PRE_EXECUTION, other) is not fast_blinker.FAST
        signal.connect(receiver)  # to every sender
        assert plan.wants(Stage.PRE_EXECUTION, one) and plan.wants(Stage.PRE_EXECUTION, other)
    finally:
        signal.disconnect(receiver)
    assert id(receiver) not in signal.receivers and plan.idle_for(one) and plan.idle_for(other)


def test_signals_reach_the_receivers_of_the_sender_and_of_any_only(make_rlm):
    (one, lm), (other, _) = make_rlm(["SUBMIT(answer='ok')"]), make_rlm(["SUBMIT(answer='ok')"])
    rlm_events.instrument(one)
    rlm_events.instrument(other)
    heard: dict[str, list[str]] = {"one": [], "any": [], "other": []}
    receivers = {name: (lambda sender, ctx, name=name: heard[name].append(ctx.stage.value)) for name in heard}
    BY_STAGE[Stage.PRE_EXECUTION].connect(receivers["one"], sender=one, weak=False)
    BY_STAGE[Stage.PRE_EXECUTION].connect(receivers["any"], weak=False)
    BY_STAGE[Stage.PRE_EXECUTION].connect(receivers["other"], sender=other, weak=False)
    try:
        with dspy.context(lm=lm):
            assert one(text="x").answer == "ok"
    finally:
        for receiver in receivers.values():
            BY_STAGE[Stage.PRE_EXECUTION].disconnect(receiver)
    assert heard == {"one": ["pre_execution"], "any": ["pre_execution"], "other": []}


def test_contexts_a_real_run_builds_are_what_pydantic_builds(make_rlm):
    """The stage seams build contexts with ``construct`` (every field given): same fields, order and set fields."""
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=2)
    built: list[StageContext] = []

    def keep(ctx, next):
        built.append(ctx)
        return next(ctx)

    events = rlm_events.instrument(rlm)
    for stage in Stage:
        events.use(stage, keep)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert {ctx.stage for ctx in built} == set(Stage) - {Stage.EXTRACT, Stage.TOOL_CALL}
    for ctx in built:
        reference = _pydantic_construct(type(ctx), **ctx.__dict__)
        assert list(ctx.__dict__) == list(type(ctx).model_fields), ctx.stage  # every field, declaration order
        assert ctx.model_fields_set == reference.model_fields_set == set(type(ctx).model_fields)
        assert ctx == reference and repr(ctx) == repr(reference)


def test_signal_delivery_keeps_blinker_semantics(make_rlm):
    """Receivers are called the way blinker's send() calls them: muted signals send nothing, a weakly connected
    receiver that died is skipped, bound methods and async receivers are called, errors carry the signal's name."""
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"] * 4)
    rlm_events.instrument(rlm)
    signal = BY_STAGE[Stage.PRE_EXECUTION]
    heard: list[str] = []

    class Listener:
        def on(self, sender, ctx):
            heard.append(f"method {sender is rlm}")

    async def on_async(sender, ctx):
        heard.append("async")

    def dying(sender, ctx):
        heard.append("dead")

    listener = Listener()
    signal.connect(listener.on, sender=rlm)  # weak: a WeakMethod
    signal.connect(on_async, sender=rlm)
    signal.connect(dying, sender=rlm)
    try:
        del dying
        gc.collect()
        with dspy.context(lm=lm):
            rlm(text="x")
            assert sorted(heard) == ["async", "method True"]
            heard.clear()
            with signal.muted():
                rlm(text="x")
            assert heard == []
            asyncio.run(rlm.acall(text="x"))
            assert sorted(heard) == ["async", "method True"]

            def boom(sender, ctx):
                raise RuntimeError("listener failed")

            signal.connect(boom, sender=rlm)
            with pytest.raises(RuntimeError, match="listener failed") as raised:
                rlm(text="x")
            assert any("pre_execution" in note for note in raised.value.__notes__)
    finally:
        signal.disconnect(listener.on)
        signal.disconnect(on_async)
        with contextlib.suppress(NameError):
            signal.disconnect(boom)


def test_a_loop_method_with_positional_only_parameters_is_called_positionally(make_rlm):
    class Changed(dspy.RLM):
        def _execute_iteration(self, repl, variables, history, iteration, input_args, output_field_names, /, *rest):
            outcome = super()._execute_iteration(
                repl, variables, history, iteration, input_args, output_field_names, *rest
            )
            return outcome

    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    rlm.__class__ = Changed
    events = rlm_events.instrument(rlm)
    codes: list[str] = []
    events.tap([Stage.POST_EXECUTION], lambda ctx: codes.append(ctx.code), inline=True)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert codes == ["print(1)", "SUBMIT(answer='ok')"]
