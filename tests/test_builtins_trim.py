"""HistoryTrimmer: old outputs shortened in real loops, recent ones verbatim, prompts smaller."""

from __future__ import annotations

import asyncio

import dspy
import pytest
from dspy.primitives.repl_types import REPLHistory

import rlm_events
from rlm_events.builtins import HistoryTrimmer

LONG_STEPS = [f"print('{c}' * 2000)" for c in "abcde"] + ["SUBMIT(answer='ok')"]


def action_prompts(lm) -> list[str]:
    return [str(h["messages"]) for h in lm.history if "[[ ## code ## ]]" in str(h["messages"][0])]


def run(make_rlm, trimmer, *, mode="sync"):
    rlm, lm = make_rlm(LONG_STEPS, max_iters=8)
    events = rlm_events.instrument(rlm)
    states = []
    if trimmer is not None:
        trimmer.install(events)
        events.tap(["run_end"], lambda ctx: states.append(ctx.run.state), inline=True)
    with dspy.context(lm=lm):
        result = rlm(text="x") if mode == "sync" else asyncio.run(rlm.acall(text="x"))
    return result, lm, states


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_old_outputs_become_previews_and_the_last_ones_stay_verbatim(make_rlm, mode):
    result, lm, states = run(make_rlm, HistoryTrimmer(keep_last=2, max_chars=200), mode=mode)
    outputs = [entry["output"] for entry in result.trajectory]
    # Trimmed before the 6th iteration: entries 0-2; entries 3-4 are the last two; 5 is the SUBMIT.
    for i, letter in enumerate("abc"):
        assert len(outputs[i]) <= 200
        assert outputs[i].startswith(letter * 50) and outputs[i].endswith(letter * 50)
        assert "[HistoryTrimmer: " in outputs[i] and "of 2,000 chars omitted]" in outputs[i]
    assert outputs[3] == "d" * 2000 and outputs[4] == "e" * 2000
    assert [e["code"] for e in result.trajectory] == LONG_STEPS  # code is kept verbatim
    stats = states[0]["history_trimmer"]
    assert stats.trimmed_entries == 3 and stats.chars_removed == sum(2000 - len(o) for o in outputs[:3])

    _, untrimmed_lm, _ = run(make_rlm, None)
    assert len(action_prompts(lm)[-1]) < len(action_prompts(untrimmed_lm)[-1]) - 5000


def test_drop_mode_replaces_old_outputs_with_a_marker(make_rlm):
    result, _, _ = run(make_rlm, HistoryTrimmer(keep_last=1, mode="drop"))
    outputs = [entry["output"] for entry in result.trajectory]
    assert outputs[:4] == ["[HistoryTrimmer: output of 2,000 chars dropped]"] * 4
    assert outputs[4] == "e" * 2000


def test_trim_unit_behaviour():
    trimmer = HistoryTrimmer(keep_last=1, max_chars=100)
    history = REPLHistory(max_output_chars=123)
    for output in ("x" * 500, "short", "y" * 500):
        history = history.append(reasoning="r", code="print()", output=output)
    trimmed = trimmer.trim(history)
    assert trimmed is not history and history.entries[0].output == "x" * 500  # a new history; the old one intact
    assert getattr(trimmed, "max_output_chars", 123) == 123  # a REPLHistory field from DSPy 3.2 on
    assert [len(e.output) <= 100 for e in trimmed.entries] == [True, True, False]
    assert trimmed.entries[1].output == "short"
    assert trimmer.trim(trimmed) is trimmed  # idempotent: markers are recognised
    assert HistoryTrimmer(keep_last=5).trim(history) is history
    assert all(len(e.output) <= 100 for e in HistoryTrimmer(keep_last=0, max_chars=100).trim(history).entries)


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="keep_last"):
        HistoryTrimmer(keep_last=-1)
    with pytest.raises(ValueError, match="max_chars"):
        HistoryTrimmer(max_chars=20)
    with pytest.raises(ValueError, match="mode"):
        HistoryTrimmer(mode="summarise")  # type: ignore[arg-type]
