"""How much sooner a ``dspy.RLM`` run finishes with :class:`~rlm_events.builtins.Speculate`, against the bare run.

Run ``python benchmarks/latency.py`` (``--repeats N``, ``--interpreter local|inprocess``, ``--json PATH``;
``--streamed`` runs the streamed scenarios of ``benchmarks/latency_streamed.py`` instead: a real LiteLLM main LM that
writes slowly, against local servers). It is
deterministic and offline: the main LM is a :class:`~rlm_events.testing.ScriptedLM` playing the same code in every
variant (``--lm-ms`` adds a fixed delay per action); the tools and the sub-LM sleep fixed times and return outputs
that depend only on their arguments. Sleeps are what is measured, so a loaded machine barely moves the figures.

Scenarios (each a real ``dspy.RLM`` call on the real interpreter):

1. ``reference`` - the shape of the reference package's benchmark: a loop over a literal list calling a tool
   (60 ms) plus one other tool (120 ms); a step whose arguments come from REPL state an earlier iteration left
   (90 ms each); ``llm_query`` in a loop plus one ``llm_query_batched`` (sub-LM: 150 ms per prompt); SUBMIT.
2. ``fan-out`` - one iteration builds a list of 10 chunks in the REPL, the next calls ``llm_query`` on each.
3. ``past-unknown`` - timing code (``now = time.perf_counter``), a loop of a pure tool, then a function of the code
   the planner cannot follow (it rebinds a global), after which a sub-LM call on that global (mispredicted: wasted)
   and a pure tool (planned past it: claimed; not called ahead by ``conservative``).
4. ``dependent`` - a chain where every call needs the previous one's result (the first comes from a tool that
   is not marked pure): nothing can be predicted; speculation may only cost its planning.

Variants: ``bare`` (no Speculate), ``speculate`` (``Speculate(pure=[...])``, defaults), ``literals``
(``repl_state=False``: planning from the code's literals and the input variables only), ``composed`` (with a
CodeGuard, a hard Budget and a JSONL trace) and ``conservative`` (``past_unknown_calls=False``). They are interleaved
(one call of each per round, the order rotated every round); figures are medians over the rounds. Every call's
trajectory (each iteration's code and output) and answer are compared with the bare run's: any difference fails
the benchmark (exit status 1), whatever the timings.

Reported per scenario and variant: wall time and its ratio to bare, the time the code was blocked inside tool
calls (``tool_call`` time, measured by an outermost middleware in every variant), calls speculated, claimed and
wasted, and the tokens spent on wasted calls. Beside them, the physical limit: the bare run's time outside tool
calls plus the critical path of its tool calls if every independent call ran at once.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup when dspy imports litellm

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

import rlm_events
from rlm_events.builtins import Budget, CodeGuard, Speculate, SpeculateStats
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm
from rlm_events.trace import JsonlTrace


def _sibling(name: str) -> Any:
    """``benchmarks/<name>.py`` as the module ``name``, loaded by path once (this file runs as a script, and as a
    module loaded by path in the tests, where ``benchmarks/`` is not on ``sys.path``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
    return sys.modules[name]


scenarios = _sibling("latency_scenarios")
CHAIN_MS, SCENARIOS, SUB_LM_MS, TOOL_MS, X = (
    scenarios.CHAIN_MS,
    scenarios.SCENARIOS,
    scenarios.SUB_LM_MS,
    scenarios.TOOL_MS,
    scenarios.X,
)
Scenario = scenarios.Scenario


# -- one variant of one scenario ------------------------------------------------------------------------------


class _SlowLM(ScriptedLM):
    """The scripted main LM, taking ``delay_ms`` per action."""

    def __init__(self, steps: list[str], delay_ms: float) -> None:
        super().__init__(steps)
        self.delay_ms = delay_ms

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        if self.delay_ms:
            scenarios.sleep_ms(self.delay_ms)
        return super().forward(prompt=prompt, messages=messages, **kwargs)


class _ToolTimer:
    """An outermost tool_call middleware: how long the code was blocked in tool calls, per run."""

    def __call__(self, ctx: Any, next: Any) -> Any:
        started = time.perf_counter()
        try:
            return next(ctx)
        finally:
            elapsed = time.perf_counter() - started
            ctx.run.state["tool_seconds"] = ctx.run.state.get("tool_seconds", 0.0) + elapsed


@dataclass
class Outcome:
    wall_s: float
    tool_s: float
    trajectory: list[tuple[str, str]]
    answer: str
    stats: SpeculateStats | None


@dataclass
class Variant:
    name: str
    speculate: Callable[[Scenario], Speculate | None]
    rlm: Any = None
    sub_lm: Any = None
    outcomes: list[Outcome] = field(default_factory=list)


VARIANTS: list[tuple[str, Callable[[Scenario], Speculate | None]]] = [
    ("bare", lambda s: None),
    ("speculate", lambda s: Speculate(pure=s.pure)),
    ("literals", lambda s: Speculate(pure=s.pure, repl_state=False)),
    ("composed", lambda s: Speculate(pure=s.pure)),  # with CodeGuard, a hard Budget and a JSONL trace (see _make)
    ("conservative", lambda s: Speculate(pure=s.pure, past_unknown_calls=False)),
]


def _make(scenario: Scenario, variant: Variant, interpreter: Callable[[], Any]) -> None:
    variant.sub_lm = ScriptedLM(["unused"], sub=scenarios.sub_lm_answer, cost_per_1k_tokens=0.5, model="sub")
    rlm = build_rlm(
        "text -> answer",
        max_iters=len(scenario.steps) + 1,
        interpreter_factory=interpreter,
        tools=list(scenario.tools) or None,
        sub_lm=variant.sub_lm,
    )
    events = rlm_events.instrument(rlm)
    events.use("tool_call", _ToolTimer())
    if variant.name == "composed":
        CodeGuard().install(events)
        Budget(max_tokens=10_000_000, max_cost_usd=100.0, hard=True).install(events)
        JsonlTrace(open(os.devnull, "w", encoding="utf-8")).install(events)  # noqa: SIM115 - lives as long as the RLM
    speculate = variant.speculate(scenario)
    if speculate is not None:
        speculate.install(events)
    captured: dict[str, Any] = {}

    def at_end(ctx: Any) -> None:
        captured["tool_s"] = ctx.run.state.get("tool_seconds", 0.0)
        captured["stats"] = Speculate.stats(ctx.run)

    events.tap(["run_end"], at_end, inline=True)
    variant.rlm = (rlm, captured)


def _call(scenario: Scenario, variant: Variant, lm_ms: float) -> Outcome:
    rlm, captured = variant.rlm
    lm = _SlowLM(scenario.steps, lm_ms)
    captured.clear()
    started = time.perf_counter()
    with dspy.context(lm=lm):
        prediction = rlm(**scenario.inputs)
    wall = time.perf_counter() - started
    trajectory = [(str(e.get("code")), str(e.get("output"))) for e in prediction.trajectory]
    variant.sub_lm.history.clear()
    return Outcome(wall, captured.get("tool_s", 0.0), trajectory, str(prediction.answer), captured.get("stats"))


def run_scenario(scenario: Scenario, *, repeats: int, interpreter: Callable[[], Any], lm_ms: float) -> dict:
    variants = [Variant(name, make) for name, make in VARIANTS]
    for variant in variants:
        _make(scenario, variant, interpreter)
    for round_ in range(repeats + 1):  # round 0 warms up (imports, first worker start) and is not counted
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            outcome = _call(scenario, variant, lm_ms)
            if round_:
                variant.outcomes.append(outcome)
    bare = variants[0]
    reference = bare.outcomes[0]
    rows: dict[str, Any] = {}
    bare_wall = statistics.median(o.wall_s for o in bare.outcomes)
    bare_tool = statistics.median(o.tool_s for o in bare.outcomes)
    limit_s = (bare_wall - bare_tool) + scenario.critical_path_ms / 1000
    all_identical = True
    for variant in variants:
        walls = [o.wall_s for o in variant.outcomes]
        tools = [o.tool_s for o in variant.outcomes]
        differences = [
            i
            for i, o in enumerate(variant.outcomes)
            if o.trajectory != reference.trajectory or o.answer != reference.answer
        ]
        all_identical &= not differences
        stats = [o.stats for o in variant.outcomes if o.stats is not None]

        def median_of(attribute: str, stats: list[SpeculateStats] = stats) -> float | None:
            return statistics.median(getattr(s, attribute) for s in stats) if stats else None

        wall = statistics.median(walls)
        tool = statistics.median(tools)
        rows[variant.name] = {
            "wall_s": round(wall, 4),
            "wall_speedup": round(bare_wall / wall, 3),
            "tool_blocking_s": round(tool, 4),
            "tool_speedup": round(bare_tool / tool, 3) if tool else None,
            "speculated": median_of("speculated"),
            "claimed": median_of("claimed"),
            "wasted": median_of("wasted"),
            "cancelled": median_of("cancelled"),
            "wasted_tokens": median_of("wasted_tokens"),
            "past_unknown": median_of("past_unknown"),
            "misprediction_rate": median_of("misprediction_rate"),
            "planning_ms": round(1000 * m, 3) if (m := median_of("planning_seconds")) is not None else None,
            "repl": stats[0].repl if stats else None,
            "identical": not differences,
            "differing_rounds": differences,
            "walls_s": [round(w, 4) for w in walls],
        }
    speedup = rows["speculate"]["wall_speedup"]
    return {
        "critical_path_ms": scenario.critical_path_ms,
        "limit_s": round(limit_s, 4),
        "limit_speedup": round(bare_wall / limit_s, 3),
        "target_speedup": scenario.target,
        "target_met": speedup >= scenario.target and all_identical,
        "identical": all_identical,
        "variants": rows,
    }


def _interpreter(name: str) -> tuple[str, Callable[[], Any]]:
    if name == "sandboxed":
        from rlm_events.sandbox import Sandboxed

        return "rlm_events.sandbox.Sandboxed", Sandboxed()
    local = getattr(dspy, "LocalInterpreter", None)
    if name == "local" or (name == "default" and local is not None):
        if local is None:
            raise SystemExit(
                f"dspy.LocalInterpreter needs DSPy 3.4+ (this is {dspy.__version__}); use --interpreter inprocess"
            )
        return "dspy.LocalInterpreter", local
    return "rlm_events.testing.InProcessInterpreter", InProcessInterpreter


def table(report: dict) -> str:
    lines = [
        f"DSPy {report['dspy']}, {report['interpreter']}, Python {report['python']}, median of {report['repeats']} "
        f"interleaved rounds, main LM {report['lm_ms']:g} ms/action",
        "",
        f"| scenario | variant | wall (s) | {X} bare | tool-blocking (s) | {X} bare | speculated | claimed | wasted "
        f"| cancelled | wasted tokens | past unknown | mispredicted | planning (ms) | identical | limit (s) "
        f"| {X} bare at limit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, scenario in report["scenarios"].items():
        for variant, row in scenario["variants"].items():

            def n(v: Any) -> str:
                return "\u2013" if v is None else f"{v:g}"

            identical = "yes" if row["identical"] else "NO"
            lines.append(
                f"| {name} | {variant} | {row['wall_s']:.3f} | {X}{row['wall_speedup']:.2f} | "
                f"{row['tool_blocking_s']:.3f} | {X}{(row['tool_speedup'] or 0):.2f} | {n(row['speculated'])} | "
                f"{n(row['claimed'])} | {n(row['wasted'])} | {n(row['cancelled'])} | {n(row['wasted_tokens'])} | "
                f"{n(row['past_unknown'])} | {n(row['misprediction_rate'])} | "
                f"{n(row['planning_ms'])} | {identical} | "
                f"{scenario['limit_s']:.3f} | {X}{scenario['limit_speedup']:.2f} |"
            )
    lines.append("")
    for name, scenario in report["scenarios"].items():
        got = scenario["variants"]["speculate"]["wall_speedup"]
        verdict = "met" if scenario["target_met"] else "NOT met"
        lines.append(f"- {name}: target {X}{scenario['target_speedup']:g} wall, got {X}{got:.2f}: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds per scenario (after one warm-up)")
    parser.add_argument("--interpreter", choices=("default", "local", "inprocess", "sandboxed"), default="default")
    parser.add_argument("--lm-ms", type=float, default=0.0, help="fixed delay of the main LM per action")
    parser.add_argument("--scenario", action="append", help="run only these scenarios")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--streamed", action="store_true", help="run the streamed scenarios (latency_streamed.py)")
    parser.add_argument("--async", dest="use_async", action="store_true", help="--streamed: measure rlm.acall")
    args = parser.parse_args(argv)
    if args.streamed:
        forwarded = ["--repeats", str(args.repeats), "--interpreter", args.interpreter]
        forwarded += [f"--scenario={name}" for name in args.scenario or ()] + (["--async"] if args.use_async else [])
        return int(_sibling("latency_streamed").main(forwarded + ([f"--json={args.json}"] if args.json else [])))
    interpreter_name, interpreter = _interpreter(args.interpreter)
    report: dict[str, Any] = {
        "dspy": dspy.__version__,
        "python": platform.python_version(),
        "interpreter": interpreter_name,
        "repeats": args.repeats,
        "lm_ms": args.lm_ms,
        "tool_ms": {**TOOL_MS, **CHAIN_MS},
        "sub_lm_ms": SUB_LM_MS,
        "scenarios": {},
    }
    for scenario in SCENARIOS:
        if args.scenario and scenario.name not in args.scenario:
            continue
        report["scenarios"][scenario.name] = run_scenario(
            scenario, repeats=args.repeats, interpreter=interpreter, lm_ms=args.lm_ms
        )
    report["identical"] = all(s["identical"] for s in report["scenarios"].values())
    report["targets_met"] = all(s["target_met"] for s in report["scenarios"].values())
    return int(_sibling("latency_streamed").publish(report, table(report), args.json))


if __name__ == "__main__":
    sys.exit(main())
