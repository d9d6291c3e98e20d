"""The demo task: count TODO/FIXME lines in a bundled text of a few thousand lines with a real ``dspy.RLM``.

It runs on an embedded scripted LM (no API key) or, with ``model``, on a real LM through DSPy, with the real
``dspy.LocalInterpreter`` when the installed DSPy has it (an in-process interpreter otherwise). The code guard and
the budget are on, the progress tap shows where the call is, every stage is printed as it fires, and the whole call
is recorded as a JSONL trace for ``python -m rlm_events view``. The script's second step reaches for the shell; the
guard refuses it, the LM gets the ``[Error]`` back and the next step recovers in plain Python.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any, TextIO

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from . import (
    Instrumentation,
    PostExecutionContext,
    PreExecutionContext,
    RunEndContext,
    StageContext,
    ToolCallContext,
    instrument,
)
from .builtins import Budget, CodeGuard
from .taps._text import is_error_result
from .taps.progress import ProgressTap
from .testing import InProcessInterpreter, ScriptedLM, build_rlm
from .trace import JsonlTrace

SIGNATURE = "text -> todo: int, fixme: int, summary: str"
DEFAULT_TRACE = "rlm-trace.jsonl"
MAX_ITERS = 8
# The budget matters with --model (a real, paid LM); the script stays far below it.
MAX_SECONDS, MAX_TOKENS, MAX_COST_USD = 120, 100_000, 0.10

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
    return ScriptedLM(
        STEPS, sub="Mostly parser and cache clean-ups; a few FIXMEs about empty input.", cost_per_1k_tokens=0.0006
    )


def install_guards(events: Instrumentation) -> str:
    """Install the code guard and the budget on ``events``; return what they are, for the banner."""
    CodeGuard("default").install(events)
    Budget(max_iterations=MAX_ITERS, max_seconds=MAX_SECONDS, max_tokens=MAX_TOKENS, max_cost_usd=MAX_COST_USD).install(
        events
    )
    return f"code guard, budget ({MAX_ITERS} iterations, {MAX_SECONDS} s, {MAX_TOKENS:,} tokens, ${MAX_COST_USD:.2f})"


def _first_line(value: Any, width: int = 70) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def stage_printer(out: TextIO | None = None) -> Any:
    """A tap printing one line per stage event (to ``out``, or to ``sys.stdout`` as it is at each event)."""

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


def run_demo(
    out: TextIO | None = None, model: str | None = None, trace_path: str | os.PathLike[str] = DEFAULT_TRACE
) -> dspy.Prediction:
    """Run the demo, printing to ``out`` (default ``sys.stdout``) and writing a fresh trace to ``trace_path``."""

    def say(text: str) -> None:
        print(text, file=out or sys.stdout, flush=True)

    lm = dspy.LM(model) if model else scripted_lm()
    rlm = build()
    events = instrument(rlm)
    guards = install_guards(events)
    events.tap(stage_printer(out))
    ProgressTap(out).install(events)
    path = Path(trace_path)
    text = bundled_text()
    say(f"rlm-events demo: count TODO/FIXME in {len(text.splitlines()):,} lines with dspy.RLM on {lm.model}")
    say(f"on: {guards}, progress, JSONL trace -> {path}\n")
    with open(path, "w", encoding="utf-8") as file, JsonlTrace(file) as trace:
        trace.install(events)
        with dspy.context(lm=lm):
            result = rlm(text=text)
    want = expected_counts(text)
    say(f"\nanswer: todo={result.todo} fixme={result.fixme} (expected {want['TODO']}/{want['FIXME']})")
    say(f"summary: {result.summary}")
    say(f"trace: {path}  ->  python -m rlm_events view {path} --open")
    return result
