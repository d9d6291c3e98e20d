"""The demo task: count TODO/FIXME lines in a bundled text of a few thousand lines with a real `dspy.RLM`.

It runs on an embedded scripted LM (no API key) or, with `model`, on a real LM through DSPy's LiteLLM client
(`api_base` for any OpenAI-compatible server), with the real `dspy.LocalInterpreter` when the installed DSPy has
it (an in-process interpreter otherwise). A real LM writes its own code: whatever it answers, the demo ends with
the answer it got (or the run's error), the LM use it counted and the trace. The code guard and
the budget are on, the progress tap shows where the call is, every stage is printed as it fires, and the whole call
is recorded as a JSONL trace for `python -m rlm_events view`. The script's second step reaches for the shell; the
guard refuses it, the LM gets the `[Error]` back and the next step recovers in plain Python.

With `mlflow_uri` (`python -m rlm_events demo --mlflow`) the call is also recorded as an MLflow trace, with
`mlflow.dspy.autolog()` on and [`MlflowTap`][rlm_events.taps.MlflowTap] installed, in the tracking store at that URI
(default `sqlite:///mlruns.db`, in the working directory), for `mlflow ui`.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import dspy

from . import (
    Instrumentation,
    PostExecutionContext,
    PreExecutionContext,
    RunEndContext,
    Stage,
    StageContext,
    ToolCallContext,
    instrument,
)
from ._optional import requiring
from ._patch import dspy_model_info
from .build import build_rlm
from .builtins import Budget, CodeGuard
from .inprocess import InProcessInterpreter
from .scripted import ScriptedLM
from .taps._text import is_error_result
from .taps.progress import ProgressTap
from .trace import JsonlTrace
from .trace.writer import usage_of

SIGNATURE = "text -> todo: int, fixme: int, summary: str"
DEFAULT_TRACE = "rlm-trace.jsonl"
DEFAULT_MLFLOW_URI = "sqlite:///mlruns.db"
MLFLOW_EXPERIMENT = "rlm-events demo"
MAX_ITERS = 8
# The budget matters with --model (a real, paid LM); the script stays far below it.
MAX_SECONDS, MAX_TOKENS, MAX_COST_USD = 120, 100_000, 0.10
# Local servers (vLLM, Ollama, llama.cpp, ...) ignore the key, but LiteLLM's OpenAI client refuses to start without one.
PLACEHOLDER_API_KEY = "no-key"
SUB_ANSWER = "Mostly parser and cache clean-ups; a few FIXMEs about empty input."

STEPS: list[tuple[str, str]] = [
    ("Look at the data first.", "lines = text.splitlines()\nprint(len(lines), 'lines')\nprint(lines[:3])"),
    (
        "grep can count the markers for me.",
        "import subprocess\n"
        "out = subprocess.run(['grep', '-cE', 'TODO|FIXME'], input=text, capture_output=True, text=True)\n"
        "print(out.stdout)",
    ),
    (
        "The shell is off limits here; find the marker lines in Python.",
        "hits = [l for l in lines if 'TODO' in l or 'FIXME' in l]\nprint(len(hits), 'hits')\nprint(hits[:3])",
    ),
    (
        "Count each marker as a whole word.",
        "import re\ncounts = {k: sum(1 for l in lines if re.search(r'\\b' + k + r'\\b', l)) for k in ('TODO', 'FIXME')}"
        "\nprint(counts)",
    ),
    ("Ask a sub-LLM for a summary.", "summary = llm_query('Summarise: ' + '\\n'.join(hits[:10]))\nprint(summary)"),
    ("Submit.", "SUBMIT(todo=counts['TODO'], fixme=counts['FIXME'], summary=summary)"),
]

_TOPICS = ["parser", "cache", "retry logic", "auth", "logging", "the scheduler", "error messages", "tests"]


def bundled_text(lines: int = 3000, seed: int = 7) -> str:
    """A deterministic source-like text with TODO/FIXME markers sprinkled in."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        roll = rng.random()
        if roll < 0.02:
            out.append(f"    # TODO: revisit {rng.choice(_TOPICS)} (line {i})")
        elif roll < 0.03:
            out.append(f"    # FIXME: {rng.choice(_TOPICS)} breaks on empty input")
        else:
            out.append(f"    value_{i} = compute({i}, {rng.randint(0, 99)})")
    return "\n".join(out)


def expected_counts(text: str) -> dict[str, int]:
    lines = text.splitlines()
    return {k: sum(1 for line in lines if f"{k}:" in line) for k in ("TODO", "FIXME")}


def interpreter_factory() -> Any:
    return getattr(dspy, "LocalInterpreter", InProcessInterpreter)


def build(max_iters: int = MAX_ITERS) -> dspy.RLM:
    return build_rlm(SIGNATURE, max_iters=max_iters, interpreter_factory=interpreter_factory())


def scripted_lm() -> ScriptedLM:
    return ScriptedLM(STEPS, sub=SUB_ANSWER, cost_per_1k_tokens=0.0006)


def real_lm(model: str, api_base: str | None = None, api_key: str | None = None) -> dspy.LM:
    """`dspy.LM(model)` (LiteLLM) with DSPy's cache off, so that every run makes, and meters, its own calls.

    `api_key` defaults to what LiteLLM finds itself (the provider's variable, e.g. `OPENAI_API_KEY`); with an
    `api_base` for an `openai/` model and no `OPENAI_API_KEY` set, to a placeholder (local servers need none).
    """
    if api_key is None and api_base and model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
        api_key = PLACEHOLDER_API_KEY
    options = {k: v for k, v in (("api_base", api_base), ("api_key", api_key)) if v is not None}
    return dspy.LM(model, cache=False, **options)


def has_price(model: str) -> bool:
    """Whether LiteLLM's model-cost map prices `model` (DSPy prices calls from that map, or from its own copy of
    it), so that the demo's dollar cap can hold; a price given with `register_prices` counts. Without LiteLLM,
    DSPy's own map."""
    try:
        import litellm  # DSPy's client, which register_prices also registers with
    except ImportError:  # DSPy 3.4's own engine runs without it; on 3.4.0 importing it after DSPy fails
        info: Mapping[str, Any] = dspy_model_info(model)
    else:
        try:
            info = litellm.get_model_info(model)
        except Exception:  # LiteLLM raises for a model it does not know
            return False
    return bool(info.get("input_cost_per_token") or info.get("output_cost_per_token"))


def install_guards(
    events: Instrumentation, *, dollar_cap: bool = True, prices: Mapping[str, tuple[float, float]] | None = None
) -> str:
    """Install the code guard and the budget on `events` (with a dollar cap only if `dollar_cap`: a model
    without a price cannot be capped in dollars; `prices` go to the Budget); return what they are, for the banner."""
    CodeGuard("default").install(events)
    max_cost_usd = MAX_COST_USD if dollar_cap else None
    Budget(
        max_iterations=MAX_ITERS,
        max_seconds=MAX_SECONDS,
        max_tokens=MAX_TOKENS,
        max_cost_usd=max_cost_usd,
        prices=prices,
    ).install(events)
    caps = f"{MAX_ITERS} iterations, {MAX_SECONDS} s, {MAX_TOKENS:,} tokens"
    return f"code guard, budget ({caps}, {f'${MAX_COST_USD:.2f}' if dollar_cap else 'no dollar cap'})"


def usage_line(usage: dict[str, Any] | None, model: str) -> str:
    """What the call's LM use was, as its trace records it: calls, tokens (prompt + completion) and cost."""
    if usage is None:
        return "usage: not metered"
    calls = usage["lm_calls"]
    text = (
        f"usage: {calls} LM call{'' if calls == 1 else 's'}, {usage['total_tokens']:,} tokens "
        f"({usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,} completion), "
    )
    cost = usage.get("cost_usd")
    text += f"${cost:.4f}" if cost is not None else f"cost unknown (LiteLLM has no price for {model})"
    if usage.get("unmetered_lm_calls"):
        text += f"; {usage['unmetered_lm_calls']} call(s) answered without usage, not counted"
    if usage.get("cached_lm_calls"):
        text += f"; {usage['cached_lm_calls']} answered from DSPy's cache"
    return text


def _first_line(value: Any, width: int = 70) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def stage_printer(out: TextIO | None = None) -> Any:
    """A tap printing one line per stage event (to `out`, or to `sys.stdout` as it is at each event)."""

    def show(ctx: StageContext) -> None:
        where = "" if ctx.iteration is None else f" #{ctx.iteration + 1}"
        detail = ""
        if isinstance(ctx, PreExecutionContext):
            detail = " " + _first_line(ctx.code.splitlines()[0] if ctx.code else "")
            if ctx.skipped:
                detail += "  [not run: a middleware supplied the result]"
        elif isinstance(ctx, PostExecutionContext):
            if is_error_result(ctx.result):  # its second line says what went wrong
                detail = " -> " + _first_line(" ".join(ctx.result.splitlines()[:2]), 150)
            else:
                detail = " -> " + _first_line(ctx.result)
        elif isinstance(ctx, ToolCallContext):
            detail = f" {ctx.name}(...)"
        elif isinstance(ctx, RunEndContext):
            detail = f" iterations={ctx.iterations} {ctx.duration_s * 1000:.0f} ms"
        line = f"[{ctx.run.id[:8]}] {ctx.stage.value:<15}{where}{detail}".rstrip()
        print(line, file=out or sys.stdout, flush=True)

    return show


class _MlflowRecording:
    """The demo's MLflow side: tracking store, experiment, autolog and the tap; undone by `close()`."""

    def __init__(self, events: Instrumentation, uri: str) -> None:
        with requiring(
            "mlflow",
            "--mlflow",
            "MLflow",
            hint="a local store needs the full mlflow package: pip install mlflow",
            error=RuntimeError,
        ):
            import mlflow
        from .taps.mlflow import MlflowTap

        self.mlflow, self.uri = mlflow, uri
        self.previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            self.experiment = mlflow.set_experiment(MLFLOW_EXPERIMENT)
        except Exception as exc:
            mlflow.set_tracking_uri(self.previous_uri)
            hint = ""
            if not uri.startswith(("http://", "https://", "databricks")):
                hint = " (a local store needs the full mlflow package: pip install mlflow)"
            raise RuntimeError(f"cannot use the MLflow tracking store {uri}{hint}: {exc}") from exc
        mlflow.dspy.autolog()
        self.tap = MlflowTap().install(events)
        self.events = events

    def trace_id(self) -> str | None:
        """The demo call's trace, once it is stored (MLflow logs spans in the background)."""
        flush = getattr(self.mlflow, "flush_trace_async_logging", None)
        if flush is not None:
            flush()
        return self.mlflow.get_last_active_trace_id()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.tap.uninstall(self.events)
        self.mlflow.dspy.autolog(disable=True)
        self.mlflow.set_tracking_uri(self.previous_uri)


def run_demo(
    out: TextIO | None = None,
    model: str | None = None,
    trace_path: str | os.PathLike[str] = DEFAULT_TRACE,
    mlflow_uri: str | None = None,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    price: tuple[float, float] | None = None,
) -> dspy.Prediction:
    """Run the demo, printing to `out` (default `sys.stdout`) and writing a fresh trace to `trace_path`; with
    `mlflow_uri`, also record it as an MLflow trace there.

    With `model`, the LM is `real_lm()` (`api_base`/`api_key` passed on). `price` is the model's
    `(input, output)` price in USD per million tokens (registered for the process by the Budget); without it the
    dollar cap is kept only if LiteLLM prices the model. A failed call (the LM's answer could not be parsed, the
    provider refused, ...) raises after the trace recorded it and the LM use was printed. It changes no
    environment variable (`python -m rlm_events demo` sets `LITELLM_LOCAL_MODEL_COST_MAP=True` unless set).
    """

    def say(text: str) -> None:
        print(text, file=out or sys.stdout, flush=True)

    lm = real_lm(model, api_base, api_key) if model else scripted_lm()
    rlm = build()
    events = instrument(rlm)
    prices = {model: price} if model and price is not None else None
    guards = install_guards(events, dollar_cap=not model or prices is not None or has_price(model), prices=prices)
    events.tap(stage_printer(out))
    ProgressTap(out).install(events)
    usage: dict[str, Any] = {}  # the call's LM use at run_end (the Budget meters the run)
    events.tap([Stage.RUN_END], lambda ctx: usage.update(record=usage_of(ctx.run)))

    recording = _MlflowRecording(events, mlflow_uri) if mlflow_uri else None
    path = Path(trace_path)
    text = bundled_text()
    where = f" at {api_base}" if model and api_base else ""
    say(f"rlm-events demo: count TODO/FIXME in {len(text.splitlines()):,} lines with dspy.RLM on {lm.model}{where}")
    mlflow_note = f", MLflow trace -> {mlflow_uri}" if mlflow_uri else ""
    say(f"on: {guards}, progress, JSONL trace -> {path}{mlflow_note}\n")
    try:
        with open(path, "w", encoding="utf-8") as file, JsonlTrace(file) as trace:
            trace.install(events)
            with dspy.context(lm=lm):
                result = rlm(text=text)
        trace_id = recording.trace_id() if recording is not None else None
    finally:
        if recording is not None:
            recording.close()
        if "record" in usage:
            say("\n" + usage_line(usage["record"], lm.model))
    want = expected_counts(text)
    say(f"answer: todo={result.todo} fixme={result.fixme} (expected {want['TODO']}/{want['FIXME']})")
    say(f"summary: {_first_line(result.summary, 200)}")
    say(f"trace: {path}  ->  python -m rlm_events view {path} --open")
    if recording is not None and mlflow_uri:
        experiment = recording.experiment.experiment_id
        say(f"MLflow trace {trace_id} in experiment {MLFLOW_EXPERIMENT!r} ({experiment}) at {mlflow_uri}")
        if mlflow_uri.startswith(("http://", "https://")):
            say(f"open: {mlflow_uri.rstrip('/')}/#/experiments/{experiment}/traces")
        else:
            say(
                f"open: mlflow ui --backend-store-uri {mlflow_uri}  ->  http://127.0.0.1:5000/#/experiments/{experiment}/traces"
            )
    return result
