"""What rlm-events adds to every iteration of a real ``dspy.RLM`` loop, measured against the bare loop.

Run ``python benchmarks/overhead.py`` (``--quick`` for a smoke run, ``--json PATH`` to also write the figures).
Everything runs in one process, offline:

* **Loop overhead.** A real ``dspy.RLM`` whose LM answers instantly (:class:`~rlm_events.testing.ScriptedLM`) runs
  exactly ``--iterations`` iterations per call (``max_iters`` = iterations, ``SUBMIT`` only in the last one). Each
  configuration (see :data:`CONFIGS`) has its own RLM; one round calls each once, in an order rotated every round,
  so machine drift and position effects hit every configuration alike. Per configuration: the median call time,
  the time added per iteration (median of the per-round differences to the bare call, divided by the iterations)
  and the ratio to bare (median of the per-round ratios, with the half-width of its ~95% confidence interval).
  Done with the cheap in-process interpreter (the loop's own cost is smallest, so overhead shows most; timed in
  CPU time of this process, which all of the work is and which other processes on a shared machine barely
  disturb) and with ``dspy.LocalInterpreter`` (a subprocess, the realistic case; wall time).
* **Memory.** ``tracemalloc`` growth and peak over many short calls with every mechanism in use (middleware,
  receivers and a tap on every stage) and bare, then a census of live contexts, runs and signal receivers.
* **Stage dispatch.** Micro-benchmarks of one stage seam when nothing is subscribed to that stage, and of the
  parts a subscribed stage is made of.

Every call is checked (full trajectory, expected answer), so a configuration that changed the run cannot pass as
fast. DSPy's LM/module histories and its predictor trace are cleared between calls, outside the timed section, in
every configuration. Optional configurations show "n/a" with the reason when they cannot run: the built-ins
(``rlm_events.builtins`` + ``rlm_events.trace``) and the reference package ``dspy-rlm-hooks`` (Python >= 3.12,
DSPy 3.2 and 3.3: it replaces the loop body with a copy of DSPy 3.2's). On DSPy < 3.4.1, ``--no-stack-walk`` removes
DSPy's own per-frame cost from every configuration (see :func:`_without_dspy_stack_walk`).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup when dspy imports litellm

import argparse
import importlib
import importlib.util
import inspect
import json
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy

import rlm_events
from rlm_events.testing import InProcessInterpreter, ScriptedLM


def _sibling(name: str) -> Any:
    """``benchmarks/<name>.py`` as the module ``name``, loaded by path once (this file runs as a script, and as a
    module loaded by path in the tests, where ``benchmarks/`` is not on ``sys.path``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module by name; siblings import each other by it
        spec.loader.exec_module(module)
    return sys.modules[name]


# By concern: the workload and its configurations, the memory and dispatch measurements, the figures and tables.
configuration = _sibling("overhead_configs")
micro = _sibling("overhead_micro")
tables = _sibling("overhead_report")
# The names this script had before it was split, for the tests and for other scripts.
CONFIGS, Config, Setup, build_rlm = (
    configuration.CONFIGS,
    configuration.Config,
    configuration.Setup,
    configuration.build_rlm,
)
MakeRLM = configuration.MakeRLM


def loop_benchmark(
    make_rlm: MakeRLM,
    interpreter_factory: Callable[[], Any],
    *,
    iterations: int,
    rounds: int,
    warmup: int,
    clock: str,
    tmp: Path,
    configs: Sequence[configuration.Config] = configuration.CONFIGS,
) -> dict[str, Any]:
    """Interleaved rounds over ``configs`` (the first must be the bare one); figures per configuration, from
    ``clock``: ``"wall"`` time, or ``"cpu"``, this process's CPU time (all of the work when the interpreter runs
    in-process, and insensitive to other processes competing for the CPU)."""
    if clock not in configuration.CLOCKS:
        raise ValueError(f"clock must be one of {configuration.CLOCKS}, got {clock!r}")
    name = getattr(interpreter_factory, "__name__", type(interpreter_factory).__name__)
    prepared: list[tuple[configuration.Config, dspy.RLM, ScriptedLM, configuration.Setup]] = []
    unavailable: dict[str, str] = {}
    for config in configs:
        rlm, lm = make_rlm(configuration.script(iterations), **configuration.workload(iterations, interpreter_factory))
        setup = config.apply(rlm, tmp)
        if isinstance(setup, str):
            unavailable[config.key] = setup
        else:
            prepared.append((config, rlm, lm, setup))
    times: dict[str, list[float]] = {config.key: [] for config, *_ in prepared}
    walls: dict[str, list[float]] = {config.key: [] for config, *_ in prepared}
    try:
        for round_ in range(warmup + rounds):
            shift = round_ % len(prepared)
            for config, rlm, lm, setup in prepared[shift:] + prepared[:shift]:
                elapsed = configuration.checked_call(rlm, lm, setup, iterations)
                if round_ >= warmup:
                    times[config.key].append(elapsed[clock])
                    walls[config.key].append(elapsed["wall"])
        problems = {config.key: setup.check() for config, _, _, setup in prepared}
    finally:
        for _, _, _, setup in prepared:
            setup.teardown()
    bare = times[configs[0].key]
    rows: list[tables.Row] = []
    for config in configs:
        if config.key in unavailable:
            rows.append(tables.Row(config.key, config.label, available=False, note=unavailable[config.key]))
            continue
        own = times[config.key]
        ratios = [t / b for t, b in zip(own, bare, strict=True)]
        added = [(t - b) / iterations * 1e6 for t, b in zip(own, bare, strict=True)]
        row = tables.Row(
            config.key,
            config.label,
            available=True,
            note=problems[config.key] or "",
            median_ms=statistics.median(own) * 1e3,
            median_wall_ms=statistics.median(walls[config.key]) * 1e3,
            added_us_per_iteration=statistics.median(added),
            ratio=statistics.median(ratios),
            ratio_ci95=tables.ci95_of_median(ratios),
            target=configuration.TARGETS.get(name, {}).get(config.key),
        )
        if config.key in ("reference", "compat_hooks"):
            row.target = f"<{configuration.REFERENCE_US_PER_ITERATION:g}us/iter"
            if "reference_package" in times:  # measured here: ours must cost less than it, on the same workload
                theirs = [(t - b) / iterations * 1e6 for t, b in zip(times["reference_package"], bare, strict=True)]
                row.target = f"<{statistics.median(theirs):.1f}us/iter"
        if row.target is not None and rounds >= configuration.MIN_JUDGED_ROUNDS:
            row.met = tables.met_target(row.target, row)
        rows.append(row)
    return {
        "interpreter": name,
        "iterations": iterations,
        "rounds": rounds,
        "clock": clock,
        "bare_us_per_iteration": statistics.median(bare) / iterations * 1e6,
        "configs": [asdict(r) for r in rows],
    }


# -- report ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    iterations: int
    rounds: int
    local_rounds: int
    warmup: int
    memory_runs: int
    memory_iterations: int
    dispatch_loops: int
    clock: str = "auto"  # "auto": CPU time with the in-process interpreter, wall time with dspy.LocalInterpreter
    real_client_rounds: int = 100  # benchmarks/real_client.py: the meter on a real LM client (0: skipped)


FULL = Settings(
    iterations=50,
    rounds=100,
    local_rounds=100,
    warmup=3,
    memory_runs=10_000,
    memory_iterations=2,
    dispatch_loops=200_000,
)
QUICK = Settings(
    iterations=3,
    rounds=1,
    local_rounds=1,
    warmup=1,
    memory_runs=10,
    memory_iterations=2,
    dispatch_loops=1_000,
    real_client_rounds=1,
)


def run(
    settings: Settings = FULL,
    *,
    make_rlm: MakeRLM = build_rlm,
    local: bool = True,
    configs: Sequence[configuration.Config] = configuration.CONFIGS,
    loops_only: bool = False,
) -> dict[str, Any]:
    """Run every benchmark (only the loop benchmarks over ``configs`` with ``loops_only``); the report is plain
    JSON-able data (see :func:`render` for the table)."""
    load_before = os.getloadavg()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlm-events-bench-")))
        loops = [
            loop_benchmark(
                make_rlm,
                InProcessInterpreter,
                iterations=settings.iterations,
                rounds=settings.rounds,
                warmup=settings.warmup,
                clock="wall" if settings.clock == "wall" else "cpu",
                tmp=tmp,
                configs=configs,
            )
        ]
        local_factory = getattr(dspy, "LocalInterpreter", None)
        if local and local_factory is not None:
            loops.append(
                loop_benchmark(
                    make_rlm,
                    local_factory,
                    iterations=settings.iterations,
                    rounds=settings.local_rounds,
                    warmup=min(settings.warmup, 1),
                    clock="cpu" if settings.clock == "cpu" else "wall",  # the child process's work is not ours
                    tmp=tmp,
                    configs=configs,
                )
            )
        memory = (
            None
            if loops_only
            else micro.memory_benchmark(
                make_rlm,
                runs=settings.memory_runs,
                iterations=settings.memory_iterations,
                warmup=min(50, settings.memory_runs // 2),
                tmp=tmp,
            )
        )
    dispatch = None if loops_only else micro.dispatch_benchmark(make_rlm, loops=settings.dispatch_loops)
    rounds = 0 if loops_only else settings.real_client_rounds
    real_client = _sibling("real_client").benchmark(rounds=rounds, warmup=min(settings.warmup, 3)) if rounds else None
    return {
        "environment": {
            "dspy": dspy.__version__,
            "rlm_events": rlm_events.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_before": list(load_before),
            "load_avg_after": list(os.getloadavg()),
        },
        "settings": asdict(settings),
        "loops": loops,
        "memory": memory,
        "memory_target_bytes": 1 << 20,
        "dispatch": dispatch,
        "real_client": real_client,
    }


def render(figures: dict[str, Any]) -> str:
    """The report as plain-text tables (the real client's, when it ran, last)."""
    text = tables.render(figures)
    if figures.get("real_client"):
        text += "\n\n" + _sibling("real_client").render(figures["real_client"])
    return text


@contextmanager
def _without_dspy_stack_walk() -> Iterator[bool]:
    """DSPy before 3.4.1 calls ``inspect.stack()`` on every ``module.forward`` lookup (to warn about direct calls),
    once per iteration for ``generate_action``, at a cost that grows with the stack depth. While this is active,
    every configuration, bare included, uses DSPy 3.4.1's equivalent check instead, so each configuration's own cost
    is measured rather than DSPy's cost per frame on the stack. Yields whether anything was replaced."""
    from dspy.primitives import module as dspy_module

    original = dspy_module.Module.__getattribute__
    try:
        walks = "inspect.stack(" in inspect.getsource(original)
    except (OSError, TypeError):
        walks = False
    if not walks:
        yield False
        return

    def __getattribute__(self: Any, name: str) -> Any:  # DSPy 3.4.1's version, verbatim in behaviour
        attr = object.__getattribute__(self, name)
        if name == "forward" and callable(attr) and sys._getframe(1).f_code.co_name != "__call__":
            dspy_module.logger.warning(
                f"Calling module.forward(...) on {type(self).__name__} directly is discouraged. "
                "Please use module(...) instead."
            )
        return attr

    dspy_module.Module.__getattribute__ = __getattribute__  # type: ignore[method-assign]
    try:
        yield True
    finally:
        dspy_module.Module.__getattribute__ = original  # type: ignore[method-assign]


@contextmanager
def _quiet_dspy() -> Iterator[None]:
    """The extract fallback never runs here, but DSPy logs a warning per call at max_iters boundaries; keep the
    table readable."""
    import logging

    logger = logging.getLogger("dspy.predict.rlm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None, *, make_rlm: MakeRLM = build_rlm) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few short rounds: checks that it works, not timing")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the report as JSON to PATH")
    parser.add_argument("--iterations", type=int, help="iterations per call in the loop benchmarks")
    parser.add_argument("--rounds", type=int, help="interleaved rounds with the in-process interpreter")
    parser.add_argument("--local-rounds", type=int, help="interleaved rounds with dspy.LocalInterpreter")
    parser.add_argument("--memory-runs", type=int, help="calls in the memory benchmark")
    parser.add_argument("--no-local", action="store_true", help="skip the dspy.LocalInterpreter benchmark")
    parser.add_argument(
        "--no-stack-walk",
        action="store_true",
        help="on DSPy < 3.4.1, give every configuration (bare included) DSPy 3.4.1's cheap check for direct forward() "
        "calls instead of its inspect.stack() per iteration, whose cost grows with every frame on the stack",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", *configuration.CLOCKS),
        help="what the loop benchmarks time (default auto: CPU time of this process with the in-process "
        "interpreter, wall time with dspy.LocalInterpreter)",
    )
    parser.add_argument(
        "--configs",
        metavar="KEYS",
        help="comma-separated configuration keys to run (bare is always first), e.g. busy,compat_hooks,"
        f"reference_package; default: all of {','.join(c.key for c in configuration.CONFIGS)}",
    )
    parser.add_argument(
        "--loops-only",
        action="store_true",
        help="only the loop benchmarks: no memory, stage dispatch or real-client figures",
    )
    args = parser.parse_args(argv)
    configs = configuration.CONFIGS
    if args.configs:
        keys = {key.strip() for key in args.configs.split(",") if key.strip()}
        unknown = keys - {c.key for c in configs}
        if unknown:
            parser.error(f"--configs: unknown configuration(s) {sorted(unknown)}")
        configs = tuple(c for c in configs if c.key == "bare" or c.key in keys)
    settings = QUICK if args.quick else FULL
    overrides = {
        name: getattr(args, name)
        for name in ("iterations", "rounds", "local_rounds", "memory_runs", "clock")
        if getattr(args, name) is not None
    }
    if overrides.get("iterations", 2) < 2:
        parser.error("--iterations must be at least 2")
    settings = Settings(**{**asdict(settings), **overrides})
    with _quiet_dspy(), ExitStack() as stack:
        replaced = args.no_stack_walk and stack.enter_context(_without_dspy_stack_walk())
        report = run(settings, make_rlm=make_rlm, local=not args.no_local, configs=configs, loops_only=args.loops_only)
    report["environment"]["dspy_stack_walk_replaced"] = bool(replaced)
    report["command"] = " ".join(["python", "benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])])
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
