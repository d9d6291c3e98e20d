"""The reference package's own benchmark, its speculation and ours in one run.

``dspy-rlm-hooks`` ships a deterministic A/B benchmark (``python -m dspy_rlm_hooks.benchmark``): a scripted
``generate_action`` writes the same four iterations of code in every variant (paced, 8 characters per
``--pace-ms``), fake tools and a fake sub-LM sleep fixed times, and every iteration's code and output are
compared across variants. It takes variant functions ``f(rlm, tools)``; this script runs its own variants
(``default``: the bare RLM, ``spec``: its speculation) and ours (``rlm_events``: ``rlm_events.instrument`` +
``Speculate(pure=<every tool>)``; ``rlm_events_conservative``: the same with ``past_unknown_calls=False``) through
ITS runner in one run, checks that every variant ran identical steps, and reports wall and tool-critical
speed-ups against ``default`` and ours against theirs. ``rlm_events_streamed`` is ours given the harness's
paced chunks of code as its ``spec`` variant is (the harness feeds them to ``rlm._active_stream_turn``; ours routes
them to ``rlm_events.runtime.feed_action_text``): its scripted ``generate_action`` replaces the LM, so no LM
streaming of ours can engage there otherwise.

Run it in an environment with Python >= 3.12, DSPy 3.2 or 3.3 (the reference copies DSPy 3.2's loop body: on
another release this exits saying so), ``dspy-rlm-hooks==0.1.15`` and rlm-events (see docs/guide/speculation.md)::

    python benchmarks/reference_benchmark.py --repeats 5 [--interpreter inprocess|local|default] [--json-out F]

``--interpreter`` picks the interpreter every variant's RLM is built with (the reference's runner builds
``dspy.RLM`` with DSPy's default, ``PythonInterpreter``, which needs Deno): ``local`` (``dspy.LocalInterpreter``,
DSPy 3.4+), ``inprocess`` (``rlm_events.inprocess.InProcessInterpreter``), ``default`` (DSPy's). The default is
``local`` where DSPy has it, else ``inprocess``. Importing this module installs nothing; the variant functions can
also be given to the reference's own CLI (``--variants default spec benchmarks.reference_benchmark:rlm_events``,
from the repository's root). Exit status 1 when the steps differ between variants.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup when dspy imports litellm

import argparse
import contextlib
import functools
import importlib.util
import inspect
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATS: dict[str, list[Any]] = {}
"""The `SpeculateStats` of every run of our variants, by variant (read by `main` for the wasted-call columns)."""


def _install(variant: str, rlm: Any, tools: dict[str, Callable[..., Any]], **options: Any) -> None:
    import rlm_events
    from rlm_events.builtins import Speculate

    events = rlm_events.instrument(rlm)
    Speculate(pure=list(tools.values()), **options).install(events)
    events.tap(["run_end"], lambda ctx: STATS.setdefault(variant, []).append(Speculate.stats(ctx)), inline=True)


def rlm_events(rlm: Any, tools: dict[str, Callable[..., Any]]) -> None:
    """Our variant: `rlm_events.instrument(rlm)` and `Speculate(pure=<every tool>)` (the reference's `spec`
    variant marks every tool deterministic too)."""
    _install("rlm_events", rlm, tools)


class _Turn:
    """The reference harness's streaming hook: its scripted `generate_action` feeds the fenced code, paced, to
    `rlm._active_stream_turn.feed(chunk)` when that is set (its `spec` variant sets it). Here each chunk goes to
    `rlm_events.runtime.feed_action_text`, what any `generate_action` that writes its answer piece by piece may call:
    Speculate then plans each statement as it is written, as it does for a streamed LM."""

    def feed(self, chunk: str) -> None:
        from rlm_events.runtime import feed_action_text

        feed_action_text(chunk)


def rlm_events_streamed(rlm: Any, tools: dict[str, Callable[..., Any]]) -> None:
    """Ours, given the harness's paced chunks as the reference's `spec` variant is (see `_Turn`)."""
    _install("rlm_events_streamed", rlm, tools)
    rlm._active_stream_turn = _Turn()


def rlm_events_conservative(rlm: Any, tools: dict[str, Callable[..., Any]]) -> None:
    """Ours with `past_unknown_calls=False`: no pure tool called ahead past a call the planner cannot follow."""
    _install("rlm_events_conservative", rlm, tools, past_unknown_calls=False)


def interpreter_factory(name: str) -> Any:
    """The interpreter class `--interpreter name` builds every variant's RLM with (`None`: DSPy's default)."""
    import dspy

    if name == "default":
        return None
    if name == "local":
        local = getattr(dspy, "LocalInterpreter", None)
        if local is None:
            raise SystemExit(f"--interpreter local: DSPy {dspy.__version__} has no dspy.LocalInterpreter (3.4+)")
        return local
    if name == "inprocess":
        from rlm_events.inprocess import InProcessInterpreter

        return InProcessInterpreter
    raise SystemExit(f"--interpreter must be local, inprocess or default, got {name!r}")


@contextlib.contextmanager
def built_with(factory: Any) -> Iterator[None]:
    """While active, a `dspy.RLM` built without `interpreter_factory` gets `factory` (the reference's runner builds
    its RLMs with DSPy's default); every variant is built the same way."""
    import dspy

    if factory is None:
        yield
        return
    original = dspy.RLM.__init__
    takes_factory = "interpreter_factory" in inspect.signature(original).parameters  # DSPy 3.3+; an instance before

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if takes_factory:
            kwargs.setdefault("interpreter_factory", factory)
        elif "interpreter" not in kwargs:
            kwargs["interpreter"] = factory()
        original(self, *args, **kwargs)

    dspy.RLM.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        dspy.RLM.__init__ = original  # type: ignore[method-assign]


def _overhead_configs() -> Any:
    """`benchmarks/overhead_configs.py`, loaded by path (this file runs as a script): where the reference's fit to
    the installed DSPy is checked."""
    spec = importlib.util.spec_from_file_location("overhead_configs", Path(__file__).with_name("overhead_configs.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["overhead_configs"] = module  # its dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def summary(report: dict[str, Any], ours: str, theirs: str = "spec") -> dict[str, Any]:
    """Ours against theirs: wall and tool-critical medians, speed-ups against `default`, and ours / theirs."""
    variants = report["variants"]

    def median(name: str, key: str) -> float:
        return float(variants[name][key]["median"])

    wall_ratio = median(theirs, "wall_s") / median(ours, "wall_s")
    critical = median(ours, "tool_critical_ms")
    return {
        "ours": ours,
        "theirs": theirs,
        "wall_s": {name: median(name, "wall_s") for name in variants},
        "tool_critical_ms": {name: median(name, "tool_critical_ms") for name in variants},
        "speedup_vs_default": report["comparison"],
        "ours_vs_theirs_wall": round(wall_ratio, 3),
        "ours_vs_theirs_tool_critical": round(median(theirs, "tool_critical_ms") / critical, 3) if critical else None,
        "steps_identical": report["equivalent_steps"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tool-ms", type=float, default=60.0)
    parser.add_argument("--llm-ms", type=float, default=150.0)
    parser.add_argument("--pace-ms", type=float, default=1.0, help="pacing per 8-character chunk of code")
    parser.add_argument("--interpreter", default=None, help="local, inprocess or default (see above)")
    parser.add_argument("--conservative", action="store_true", help="also run rlm_events_conservative")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)

    import dspy
    from dspy_rlm_hooks.benchmark import default_scenario, run_ab
    from dspy_rlm_hooks.benchmark.report import _print_report

    import rlm_events as library

    unavailable = _overhead_configs().reference_does_not_run(dspy.RLM)
    if unavailable is not None:
        raise SystemExit(unavailable)
    name = args.interpreter or ("local" if hasattr(dspy, "LocalInterpreter") else "inprocess")
    variants: list[Any] = ["default", "spec", rlm_events, rlm_events_streamed]
    if args.conservative:
        variants.append(rlm_events_conservative)
    scenario = default_scenario(tool_ms=args.tool_ms, llm_ms=args.llm_ms)
    with built_with(interpreter_factory(name)):
        report = run_ab(scenario, variants, repeats=args.repeats, pace_ms=args.pace_ms)
    print(f"DSPy {dspy.__version__}, rlm-events {library.__version__}, interpreter {name}")
    _print_report(report)
    result = summary(report, "rlm_events")
    streamed = summary(report, "rlm_events_streamed")
    for name, figures in (("rlm_events", result), ("rlm_events_streamed", streamed)):
        wall, critical = figures["ours_vs_theirs_wall"], figures["ours_vs_theirs_tool_critical"]
        print(f"{name} vs spec: wall x{wall}, tool-critical x{critical}")
    result["streamed"] = streamed
    result["speculate_stats_median"] = {}
    for variant, runs in STATS.items():
        ran = [s for s in runs if s is not None]
        keys = ("dispatched", "dispatched_streaming", "claimed", "wasted", "cancelled", "missed", "wasted_tokens")
        medians = {key: statistics.median(getattr(s, key) for s in ran) if ran else None for key in keys}
        result["speculate_stats_median"][variant] = medians
        print(f"{variant} per run (median): {medians}")
    if args.json_out:
        report["summary"] = result
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=str))
    return 0 if report["equivalent_steps"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
