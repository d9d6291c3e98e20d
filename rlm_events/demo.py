"""The demo task: count TODO/FIXME lines in a bundled text of a few thousand lines with a real ``dspy.RLM``.

It runs on an embedded scripted LM (no API key) and the real ``dspy.LocalInterpreter`` when the installed DSPy has
it (an in-process interpreter otherwise), and prints each stage as it fires.
"""

from __future__ import annotations

import os
import random
from typing import Any, TextIO

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from . import Stage, StageContext, instrument
from .testing import InProcessInterpreter, ScriptedLM

SIGNATURE = "text -> todo: int, fixme: int, summary: str"

STEPS: list[tuple[str, str]] = [
    ("Look at the data first.", "lines = text.splitlines()\nprint(len(lines), 'lines')\nprint(lines[:3])"),
    (
        "Find the marker lines.",
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


def build(max_iters: int = 8) -> dspy.RLM:
    return dspy.RLM(SIGNATURE, max_iters=max_iters, interpreter_factory=interpreter_factory())


def scripted_lm() -> ScriptedLM:
    return ScriptedLM(STEPS, sub="Mostly parser and cache clean-ups; a few FIXMEs about empty input.")


def _printer(out: TextIO):
    def show(ctx: StageContext) -> None:
        where = "" if ctx.iteration is None else f" #{ctx.iteration + 1}"
        detail = ""
        if ctx.stage is Stage.PRE_EXECUTION:
            detail = " " + ctx.code.splitlines()[0][:70]  # type: ignore[attr-defined]
        elif ctx.stage is Stage.POST_EXECUTION:
            detail = " -> " + str(ctx.result).replace("\n", " ")[:70]  # type: ignore[attr-defined]
        elif ctx.stage is Stage.TOOL_CALL:
            detail = f" {ctx.name}(...)"  # type: ignore[attr-defined]
        elif ctx.stage is Stage.RUN_END:
            detail = f" iterations={ctx.iterations} {ctx.duration_s * 1000:.0f} ms"  # type: ignore[attr-defined]
        print(f"[{ctx.run.id[:8]}] {ctx.stage.value:<15}{where}{detail}", file=out, flush=True)

    return show


def run_demo(out: TextIO, model: str | None = None) -> dspy.Prediction:
    lm = dspy.LM(model) if model else scripted_lm()
    rlm = build()
    events = instrument(rlm)
    events.tap(_printer(out))
    text = bundled_text()
    with dspy.context(lm=lm):
        result = rlm(text=text)
    want = expected_counts(text)
    print(f"\nanswer: todo={result.todo} fixme={result.fixme} (expected {want['TODO']}/{want['FIXME']})", file=out)
    print(f"summary: {result.summary}", file=out)
    return result
