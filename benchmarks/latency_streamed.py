"""The streamed scenarios of ``benchmarks/latency.py``: a main LM that writes its code slowly, as real ones do.

Run ``python benchmarks/latency.py --streamed [--async]`` (or this file: ``python benchmarks/latency_streamed.py
[--repeats N] [--async] [--json PATH]``; ``--async`` measures ``await rlm.acall(...)`` instead of ``rlm(...)``).
Offline: the main LM and the sub-LM are real ``dspy.LM`` clients (LiteLLM) against two local OpenAI-compatible
servers (``rlm_events.local_openai``). The main LM answers with its first token after ``TTFT_S`` and then
``TOKENS_PER_S`` tokens a second, streamed or not (a non-streamed answer arrives whole after the same time); the
sub-LM answers each prompt after 0.5 to 1.5 s (a fixed function of the prompt).

Scenarios (a real ``dspy.RLM`` call on the real interpreter):

* ``streamed`` - one action of 20 lines whose sub-calls (five ``llm_query``) are in its first half, then SUBMIT.
* ``streamed-late`` - the same amount of code, its only sub-call in the last statement: nothing can overlap the
  writing (a statement is planned once the next one begins, the last when the code is complete).

Variants, interleaved (one call each per round, the order rotated), medians: ``bare`` (no Speculate), ``speculate``
(``Speculate(stream=False)``: planned when the code is complete) and ``streaming`` (``Speculate()``: planned as the
code is written). Every call's steps and answer are compared with the bare run's; a difference fails (exit 1).
*Limit*: the bare run's time outside sub-calls, plus, for each sub-call, what of it cannot overlap the writing: its
latency past the end of the writing, counted from when its statement is complete (the longest of these).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup when dspy imports litellm

import argparse
import asyncio
import json
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import dspy

import rlm_events
from rlm_events.builtins import Speculate
from rlm_events.inprocess import InProcessInterpreter
from rlm_events.local_openai import LocalOpenAIServer, Reply
from rlm_events.scripted import ScriptedLM
from rlm_events.testing import build_rlm

TTFT_S = 0.3
TOKENS_PER_S = 50.0
X = "\u00d7"

TOPICS = ["alpha", "beta", "gamma", "delta"]
EARLY = """out = {}
for t in ["alpha", "beta", "gamma", "delta"]:
    out[t] = llm_query(f"Summarize {t}.")
risks = llm_query("Top three risks?")
rows = [f"{t}: {out[t]}" for t in sorted(out)]
n = len(rows)
size = sum(len(r) for r in rows)
avg = size / n
head = "Digest"
rule = "=" * len(head)
body = "\\n".join(rows)
tail = f"{n} topics, avg {avg:.0f}"
parts = [head, rule, body]
parts.append("Risks: " + risks)
parts.append(tail)
report = "\\n".join(parts)
ok = report.startswith(head)
words = len(report.split())
print(words)
print(report if ok else "")"""
LATE = """lines = []
for topic in ["alpha", "beta", "gamma", "delta"]:
    lines.append(f"- {topic}: pending")
header = "Quarterly digest"
rule = "=" * len(header)
counts = {line: len(line) for line in lines}
total = sum(counts.values())
average = total / len(counts)
footer = f"{len(lines)} topics, {total} characters"
note = f"average {average:.1f}"
digest = [header, rule]
digest.extend(lines)
digest.append("")
digest.append(footer)
digest.append(note)
digest.append("end of digest")
digest.append("")
report = "\\n".join(digest)
checked = len(report) > 0 and report.startswith(header)
first = report.splitlines()[0]
second = report.splitlines()[1]
size = len(report)
words = len(report.split())
print(first, second, size, words)
risks = llm_query("List the three main risks of this digest: " + first)"""


@dataclass
class StreamedScenario:
    name: str
    code: str
    answer: str  # the variable the second action SUBMITs
    prompts: list[str]  # the sub-LM prompts the code sends, in order
    target: float  # the streaming / speculate wall ratio it must reach

    @property
    def steps(self) -> list[str]:
        return [self.code, f"SUBMIT(answer={self.answer})"]


SCENARIOS = [
    StreamedScenario(
        "streamed",
        EARLY,
        "report",
        [f"Summarize {t}." for t in TOPICS] + ["Top three risks?"],
        1.3,
    ),
    StreamedScenario(
        "streamed-late", LATE, "risks", ["List the three main risks of this digest: Quarterly digest"], 0.98
    ),
]


def sub_latency(prompt: str) -> float:
    """0.5 to 1.5 s, a fixed function of the prompt."""
    return 0.5 + (zlib.crc32(prompt.encode()) % 1000) / 1000


def sub_answer(prompt: str) -> str:
    return f"noted ({len(prompt)} chars)"


def main_replies(steps: list[str]) -> Any:
    script = ScriptedLM(steps)

    def reply(request: dict[str, Any]) -> Reply:
        text = script.answer(request.get("messages") or [])
        writing = TTFT_S + len(text) / 4 / TOKENS_PER_S  # the server streams 4 characters a token
        if request.get("stream"):
            return Reply(text, time_to_first_token=TTFT_S, tokens_per_second=TOKENS_PER_S)
        return Reply(text, delay=writing)  # a provider takes as long to write an answer it does not stream

    return reply


def sub_replies(request: dict[str, Any]) -> Reply:
    messages = request.get("messages") or []
    prompt = str(messages[-1].get("content", "")) if messages else ""
    return Reply(sub_answer(prompt), delay=sub_latency(prompt))


@dataclass
class Outcome:
    wall_s: float
    steps: list[tuple[str, str]]
    answer: str
    stats: Any


@dataclass
class Variant:
    name: str
    speculate: Any
    runs: list[Outcome] = field(default_factory=list)


def limit_s(scenario: StreamedScenario, bare_wall: float) -> float:
    """The bare run's time outside sub-calls, plus the longest part of a sub-call that cannot overlap the writing:
    its latency past the end of the writing, counted from when its statement is complete (the next top-level
    statement begins; the last one, when the code is complete)."""
    text = ScriptedLM(scenario.steps).answer([{"role": "system", "content": "[[ ## code ## ]] ```"}])
    code_at, writing_end = text.index(scenario.code), len(text) / 4 / TOKENS_PER_S
    lines = scenario.code.split("\n")
    starts = [len("\n".join(lines[:i])) + (1 if i else 0) for i in range(len(lines))]
    prompts = iter(scenario.prompts)
    past_writing = 0.0
    for number, line in enumerate(lines):
        for _ in range(line.count("llm_query(") * (len(TOPICS) if "{topic}" in line else 1)):
            following = [starts[j] for j in range(number + 1, len(lines)) if lines[j][:1] not in ("", " ")]
            ready = (code_at + (following[0] if following else len(scenario.code))) / 4 / TOKENS_PER_S
            past_writing = max(past_writing, ready + sub_latency(next(prompts)) - writing_end)
    return bare_wall - sum(sub_latency(p) for p in scenario.prompts) + past_writing


def run_scenario(
    scenario: StreamedScenario, *, repeats: int, interpreter: Any, use_async: bool = False
) -> dict[str, Any]:
    variants = [
        Variant("bare", None),
        Variant("speculate", lambda: Speculate(stream=False)),
        Variant("streaming", lambda: Speculate()),
    ]
    with (
        LocalOpenAIServer(main_replies(scenario.steps)) as main,
        LocalOpenAIServer(sub_replies) as sub,
    ):
        lm = dspy.LM("openai/main", api_base=main.base_url, api_key="x", cache=False)
        sub_lm = dspy.LM("openai/sub", api_base=sub.base_url, api_key="x", cache=False)
        for round_ in range(repeats + 1):  # round 0 warms up and is not counted
            shift = round_ % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                rlm = build_rlm("question -> answer", max_iters=3, interpreter_factory=interpreter, sub_lm=sub_lm)
                events = rlm_events.instrument(rlm)
                seen: dict[str, Any] = {}
                if variant.speculate is not None:
                    variant.speculate().install(events)
                events.tap(["run_end"], lambda ctx, seen=seen: seen.update(stats=Speculate.stats(ctx)), inline=True)
                started = time.perf_counter()
                with dspy.context(lm=lm):
                    if use_async:
                        prediction = asyncio.run(rlm.acall(question="Write the digest."))
                    else:
                        prediction = rlm(question="Write the digest.")
                wall = time.perf_counter() - started
                steps = [(str(e["code"]), str(e["output"])) for e in prediction.trajectory]
                if round_:
                    variant.runs.append(Outcome(wall, steps, str(prediction.answer), seen.get("stats")))
                lm.history.clear()
                sub_lm.history.clear()
    bare = variants[0]
    reference = bare.runs[0]
    bare_wall = statistics.median(r.wall_s for r in bare.runs)
    limit = limit_s(scenario, bare_wall)
    rows: dict[str, Any] = {}
    for variant in variants:
        wall = statistics.median(r.wall_s for r in variant.runs)
        stats = [r.stats for r in variant.runs if r.stats is not None]

        def median_of(name: str, stats: list[Any] = stats) -> Any:
            return statistics.median(getattr(s, name) for s in stats) if stats else None

        differing = [
            i for i, r in enumerate(variant.runs) if (r.steps, r.answer) != (reference.steps, reference.answer)
        ]
        rows[variant.name] = {
            "wall_s": round(wall, 3),
            "wall_speedup": round(bare_wall / wall, 3),
            "dispatched_streaming": median_of("dispatched_streaming"),
            "claimed": median_of("claimed"),
            "wasted": median_of("wasted"),
            "wasted_tokens": median_of("wasted_tokens"),
            "stream": stats[0].stream if stats else None,
            "identical": not differing,
            "walls_s": [round(r.wall_s, 3) for r in variant.runs],
        }
    ratio = rows["speculate"]["wall_s"] / rows["streaming"]["wall_s"]
    return {
        "sub_calls": len(scenario.prompts),
        "limit_s": round(limit, 3),
        "limit_speedup": round(bare_wall / limit, 3),
        "streaming_vs_speculate": round(ratio, 3),
        "target": scenario.target,
        "target_met": ratio >= scenario.target and all(r["identical"] for r in rows.values()),
        "identical": all(r["identical"] for r in rows.values()),
        "variants": rows,
    }


def _number(value: Any) -> str:
    return "\u2013" if value is None else f"{value:g}"


COLUMNS: list[tuple[str, Any]] = [
    ("wall (s)", lambda s, r: f"{r['wall_s']:.3f}"),
    (f"{X} bare", lambda s, r: f"{X}{r['wall_speedup']:.2f}"),
    ("dispatched while writing", lambda s, r: _number(r["dispatched_streaming"])),
    ("claimed", lambda s, r: _number(r["claimed"])),
    ("wasted", lambda s, r: _number(r["wasted"])),
    ("wasted tokens", lambda s, r: _number(r["wasted_tokens"])),
    ("stream", lambda s, r: r["stream"] or "\u2013"),
    ("identical", lambda s, r: "yes" if r["identical"] else "NO"),
    ("limit (s)", lambda s, r: f"{s['limit_s']:.3f}"),
    (f"{X} bare at limit", lambda s, r: f"{X}{s['limit_speedup']:.2f}"),
]
"""The table's columns after scenario and variant: (header, cell of (scenario, row))."""


def table(report: dict[str, Any]) -> str:
    headers = ["scenario", "variant", *(header for header, _ in COLUMNS)]
    caption = (
        f"DSPy {report['dspy']}, {report['interpreter']}, {'await rlm.acall()' if report.get('async') else 'rlm()'}, "
        f"median of {report['repeats']} interleaved rounds; main LM "
        f"{TTFT_S * 1000:g} ms to the first token, then {TOKENS_PER_S:g} tokens/s; sub-LM 0.5-1.5 s"
    )
    lines = [caption, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, scenario in report["scenarios"].items():
        for variant, row in scenario["variants"].items():
            cells = [name, variant, *(cell(scenario, row) for _, cell in COLUMNS)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, scenario in report["scenarios"].items():
        verdict = "met" if scenario["target_met"] else "NOT met"
        lines.append(
            f"- {name}: streaming {X}{scenario['streaming_vs_speculate']:.2f} against speculate (target "
            f"{X}{scenario['target']:g}): {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interpreter", choices=("default", "local", "inprocess"), default="default")
    parser.add_argument("--scenario", action="append")
    parser.add_argument("--json")
    parser.add_argument("--async", dest="use_async", action="store_true", help="measure await rlm.acall(...)")
    args = parser.parse_args(argv)
    local = getattr(dspy, "LocalInterpreter", None)
    use_local = args.interpreter == "local" or (args.interpreter == "default" and local is not None)
    if use_local and local is None:
        raise SystemExit(f"dspy.LocalInterpreter needs DSPy 3.4+ (this is {dspy.__version__})")
    interpreter = local if use_local else InProcessInterpreter
    report: dict[str, Any] = {
        "dspy": dspy.__version__,
        "interpreter": "dspy.LocalInterpreter" if use_local else "InProcessInterpreter",
        "repeats": args.repeats,
        "async": args.use_async,
        "scenarios": {},
    }
    for scenario in SCENARIOS:
        if not args.scenario or scenario.name in args.scenario:
            report["scenarios"][scenario.name] = run_scenario(
                scenario, repeats=args.repeats, interpreter=interpreter, use_async=args.use_async
            )
    report["identical"] = all(s["identical"] for s in report["scenarios"].values())
    return publish(report, table(report), args.json)


def publish(report: dict[str, Any], text: str, json_path: str | None) -> int:
    """Print `text`, write `report` to `json_path` (if any); the exit status: 1 when a variant's steps differed."""
    print(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    if not report["identical"]:
        print("FAILED: a variant's steps differ from the bare run's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
