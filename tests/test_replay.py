"""Record a real dspy.RLM call (ScriptedLM + LocalInterpreter) and replay it with ReplayLM on a fresh RLM."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.replay import (
    Recorder,
    Recording,
    RecordingError,
    ReplayExhaustedError,
    ReplayLM,
    ReplayTools,
)
from rlm_events.testing import ScriptedLM

STEPS = [
    ("Look at the text.", "words = text.split()\nprint(len(words), words[:2])"),
    ("Ask a sub-LLM.", "mood = llm_query('Mood of: ' + text)\nprint(mood)"),
    ("Use the tool.", "n = count_vowels(word=words[0])\nprint(n)"),
    ("Submit.", "SUBMIT(answer=f'{len(words)} words, {n} vowels, {mood}')"),
]
ANSWER = "3 words, 2 vowels, cheerful"
UNUSED = ["raise RuntimeError('the replay must not use this script')"]  # fresh RLMs get a ScriptedLM we ignore


class Counted:
    """A user tool that counts its calls, to tell replayed results from real calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.__name__ = "count_vowels"

    def __call__(self, word: str) -> int:
        self.calls += 1
        return sum(ch in "aeiou" for ch in word)


def call(rlm: dspy.RLM, asynchronous: bool, **inputs: Any) -> Any:
    """Call ``rlm`` through ``forward`` or, on a fresh event loop, through ``aforward``."""
    return asyncio.run(rlm.acall(**inputs)) if asynchronous else rlm(**inputs)


def record(make_rlm: Any, tmp_path: Path, *, asynchronous: bool = False, **options: Any) -> tuple[Path, Any]:
    """Record one call; return the saved file and the call's prediction."""
    rlm, lm = make_rlm(STEPS, tools=[Counted()], sub="cheerful", cost_per_1k_tokens=1.0, **options)
    recorder = Recorder().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = call(rlm, asynchronous, text="hello brave world")
    assert result.answer == ANSWER
    return recorder.save(tmp_path / "run.json"), result


def steps_of(trajectory: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(s["reasoning"], s["code"], s["output"]) for s in trajectory]


def test_the_recording_holds_completions_tool_results_and_the_outcome(make_rlm, tmp_path):
    path, result = record(make_rlm, tmp_path)
    recording = Recording.load(path)

    assert recording.input_args == {"text": "hello brave world"}
    assert [(c.kind, c.prompt_iteration, c.iteration) for c in recording.lm_calls] == [
        ("action", 1, 0),
        ("action", 2, 1),
        ("sub", None, 1),
        ("action", 3, 2),
        ("action", 4, 3),
    ]
    assert recording.lm_calls[2].prompt == "Mood of: hello brave world"
    assert recording.lm_calls[2].outputs == ["cheerful"]
    assert all(c.usage["total_tokens"] > 0 and c.cost for c in recording.lm_calls)
    assert [(t.name, t.args, t.kwargs, t.result, t.iteration) for t in recording.tool_calls] == [
        ("llm_query", ["Mood of: hello brave world"], {}, "cheerful", 1),
        ("count_vowels", [], {"word": "hello"}, 2, 2),
    ]
    assert recording.trajectory == json.loads(json.dumps(result.trajectory))
    assert recording.outputs == {"answer": ANSWER} and recording.error is None
    assert (recording.iterations, recording.forced_extract, recording.problems) == (4, False, [])


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_replay_reproduces_the_trajectory_on_a_fresh_rlm(make_rlm, tmp_path, asynchronous):
    path, recorded = record(make_rlm, tmp_path, asynchronous=asynchronous)
    tool = Counted()
    rlm, _ = make_rlm(UNUSED, tools=[tool])
    lm = ReplayLM.from_file(path)

    with dspy.context(lm=lm):
        replayed = call(rlm, asynchronous, **lm.recording.input_args)

    assert steps_of(replayed.trajectory) == steps_of(recorded.trajectory)  # same code, same outputs
    assert replayed.answer == recorded.answer == ANSWER
    assert lm.served == [0, 1, 2, 3, 4] and lm.remaining() == []  # llm_query answered from the recording too
    assert tool.calls == 1  # without ReplayTools the real tool runs
    assert [e["usage"] for e in lm.history] == [c.usage for c in lm.recording.lm_calls]  # budgets see the same


def test_replay_tools_serve_tool_results_without_calling_tools_or_the_sub_lm(make_rlm, tmp_path):
    sub_lm = ScriptedLM(["unused"], sub="cheerful")
    path, recorded = record(make_rlm, tmp_path, sub_lm=sub_lm)
    recording = Recording.load(path)
    assert [c.kind for c in recording.lm_calls].count("sub") == 1  # recorded from sub_lm's history

    tool = Counted()
    rlm, _ = make_rlm(UNUSED, tools=[tool])
    events = rlm_events.instrument(rlm)
    tools = ReplayTools(recording).install(events)
    lm = ReplayLM(recording)
    with dspy.context(lm=lm):
        replayed = rlm(**recording.input_args)

    assert steps_of(replayed.trajectory) == steps_of(recorded.trajectory)
    assert tool.calls == 0 and tools.remaining() == [] and tools.served == 2
    assert [c.kind for c in lm.remaining()] == ["sub"]  # llm_query never reached an LM


def test_a_middleware_under_test_runs_against_the_replayed_run(make_rlm, tmp_path):
    path, _ = record(make_rlm, tmp_path)
    rlm, _ = make_rlm(UNUSED, tools=[Counted()])
    events = rlm_events.instrument(rlm)
    sub_calls: list[str] = []

    @events.middleware(Stage.TOOL_CALL)
    def deny_sub_llm(ctx, next):  # the user's middleware under test, outside the replaying one
        if ctx.name == "llm_query":
            sub_calls.append(ctx.args[0])
            ctx.result = "[denied]"
            return ctx
        return next(ctx)

    ReplayTools(Recording.load(path)).install(events)
    lm = ReplayLM.from_file(path)
    with dspy.context(lm=lm):
        replayed = rlm(text="hello brave world")

    assert sub_calls == ["Mood of: hello brave world"]
    assert replayed.trajectory[1]["output"] == "[denied]"
    assert replayed.answer == "3 words, 2 vowels, [denied]"  # the recorded code ran on the middleware's result


def test_a_replay_that_runs_out_of_completions_names_the_call_index(make_rlm, tmp_path):
    path, _ = record(make_rlm, tmp_path)
    rlm, _ = make_rlm(UNUSED, tools=[Counted()], max_iters=8)
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.POST_ITERATION)
    def reject_answers(ctx, next):  # diverges: the recorded run ended at iteration 4
        ctx.prediction = None
        return next(ctx)

    lm = ReplayLM.from_file(path)
    with dspy.context(lm=lm), pytest.raises(ReplayExhaustedError) as raised:
        rlm(text="hello brave world")

    assert raised.value.call_index == 5
    message = str(raised.value)
    assert "LM call 5 (0-based; an action prompt for iteration 5)" in message
    assert "iterations [1, 2, 3, 4]" in message and "5 of its 5 completions were served" in message
    lm.reset()
    assert len(lm.remaining()) == 5 and lm.served == []


def test_a_missing_sub_llm_answer_fails_the_call_even_from_inside_the_interpreter(make_rlm, tmp_path):
    path, _ = record(make_rlm, tmp_path)
    recording = Recording.load(path)
    recording.lm_calls = [c for c in recording.lm_calls if c.kind != "sub"]
    rlm, _ = make_rlm(UNUSED, tools=[Counted()])

    with dspy.context(lm=ReplayLM(recording)), pytest.raises(ReplayExhaustedError, match=r"LM call 2 \(0-based"):
        rlm(text="hello brave world")  # llm_query runs on an interpreter thread; the error still ends the call


def test_replay_tools_report_a_call_the_recording_does_not_hold(make_rlm, tmp_path):
    path, _ = record(make_rlm, tmp_path)
    recording = Recording.load(path)
    recording.tool_calls = recording.tool_calls[:1]  # count_vowels was never recorded
    rlm, _ = make_rlm(UNUSED, tools=[Counted()])
    ReplayTools(recording).install(rlm_events.instrument(rlm))

    with dspy.context(lm=ReplayLM(recording)), pytest.raises(ReplayExhaustedError) as raised:
        rlm(text="hello brave world")
    assert raised.value.call_index == 1
    assert 'tool call 1 (0-based) in iteration 3: ["count_vowels", [], {"word": "hello"}]' in str(raised.value)

    tool = Counted()
    fallback, _ = make_rlm(UNUSED, tools=[tool])
    ReplayTools(recording, on_missing="call").install(rlm_events.instrument(fallback))
    with dspy.context(lm=ReplayLM(recording)):
        assert fallback(text="hello brave world").answer == ANSWER
    assert tool.calls == 1


def test_tool_errors_and_the_extract_fallback_replay(make_rlm, tmp_path):
    def lookup(key: str) -> str:
        raise KeyError(f"no {key}")

    steps = ["print(lookup(key='a'))", "print('still going')"]
    rlm, lm = make_rlm(steps, tools=[lookup], max_iters=2, extract={"answer": "from extract"})
    recorder = Recorder().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        recorded = rlm(text="t")
    recording = recorder.recording()
    assert recording.forced_extract and [c.kind for c in recording.lm_calls] == ["action", "action", "extract"]
    assert (recording.tool_calls[0].error_type, recording.tool_calls[0].error_message) == ("KeyError", "'no a'")

    replay_rlm, _ = make_rlm(UNUSED, tools=[lookup], max_iters=2)
    ReplayTools(recording).install(rlm_events.instrument(replay_rlm))
    with dspy.context(lm=ReplayLM(recording)):
        replayed = replay_rlm(text="t")
    assert steps_of(replayed.trajectory) == steps_of(recorded.trajectory)
    assert "KeyError" in replayed.trajectory[0]["output"]
    assert replayed.answer == "from extract"


def test_overlapping_recordings_on_one_lm_refuse_to_save_and_lm_copies_fix_it(make_rlm, tmp_path):
    rlm, lm = make_rlm(STEPS, tools=[Counted()], sub="cheerful")
    events = rlm_events.instrument(rlm)
    recorder = Recorder().install(events)
    both_started = threading.Barrier(2, timeout=60)

    @events.middleware(Stage.PRE_ITERATION)
    def overlap(ctx, next):
        # Both calls are past run_start (the recorder watches them) before either makes an LM call: a certain overlap.
        if ctx.iteration == 0:
            both_started.wait()
        return next(ctx)

    def call(model: dspy.BaseLM) -> None:
        with dspy.context(lm=model):
            rlm(text="hello brave world")

    for lms in ([lm, lm], [lm.copy(), lm.copy()]):
        threads = [threading.Thread(target=call, args=(m,)) for m in lms]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    shared, shared2, own, own2 = recorder.recordings
    for recording in (shared, shared2):
        with pytest.raises(RecordingError, match=r"lm\.copy\(\)"):
            recorder.save(tmp_path / "x.json", run_id=recording.run_id)
        with pytest.raises(RecordingError):
            ReplayLM(recording)
    for recording in (own, own2):
        assert recording.problems == []
        replay_rlm, _ = make_rlm(UNUSED, tools=[Counted()])
        with dspy.context(
            lm=ReplayLM.from_file(recorder.save(tmp_path / f"{recording.run_id}.json", recording.run_id))
        ):
            assert replay_rlm(text="hello brave world").answer == ANSWER


def test_without_lm_history_the_recording_says_why(make_rlm, tmp_path):
    rlm, lm = make_rlm(["SUBMIT(answer='a')"])
    recorder = Recorder().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm, disable_history=True):
        rlm(text="t")
    with pytest.raises(RecordingError, match="disable_history"):
        recorder.save(tmp_path / "run.json")


def test_recording_files_are_checked_when_loaded(tmp_path):
    not_json = tmp_path / "a.json"
    not_json.write_text("{")
    other = tmp_path / "b.json"
    other.write_text(json.dumps({"format": "something-else"}))
    damaged = tmp_path / "c.json"
    damaged.write_text(json.dumps({"format": "rlm-events-recording/1", "run_id": 3}))
    with pytest.raises(RecordingError, match="not JSON"):
        Recording.load(not_json)
    with pytest.raises(RecordingError, match="format 'something-else'"):
        ReplayLM.from_file(other)
    with pytest.raises(RecordingError, match="damaged"):
        Recording.load(damaged)
    with pytest.raises(LookupError, match="not finished recording"):
        Recorder().recording()
    with pytest.raises(ValueError, match="on_missing"):
        ReplayTools(
            Recording.model_validate_json(
                json.dumps({"run_id": "r", "module": "m", "started_at": "2024-01-01T00:00:00Z"})
            ),
            on_missing="skip",
        )  # type: ignore[arg-type]


def test_a_failed_call_is_recorded_with_its_error_and_history_and_prompts_on_request(make_rlm):
    rlm, lm = make_rlm(["print('one')", "print('two')", "SUBMIT(answer='x')"])
    events = rlm_events.instrument(rlm)
    recorder = Recorder(include_prompts=True).install(events)

    @events.middleware(Stage.PRE_ITERATION)
    def fail_third(ctx, next):
        if ctx.iteration == 2:
            raise RuntimeError("budget exceeded")
        return next(ctx)

    with dspy.context(lm=lm), pytest.raises(RuntimeError, match="budget exceeded"):
        rlm(text="t")

    recording = recorder.recording()
    assert recording.error == "RuntimeError: budget exceeded" and recording.outputs is None
    assert [s["output"] for s in recording.trajectory] == ["one", "two"]
    assert [c.prompt_iteration for c in recording.lm_calls] == [1, 2]
    assert all("[[ ## iteration ## ]]" in (c.prompt or "") for c in recording.lm_calls)


def test_one_replay_lm_replays_one_call_until_reset(make_rlm, tmp_path):
    path, _ = record(make_rlm, tmp_path)
    rlm, _ = make_rlm(UNUSED, tools=[Counted()])
    events = rlm_events.instrument(rlm)

    def stop_after_two(ctx, next):
        ctx.stop = ctx.iteration == 1
        return next(ctx)

    events.use(Stage.POST_ITERATION, stop_after_two)
    lm = ReplayLM.from_file(path)
    with dspy.context(lm=lm):
        with pytest.raises(ReplayExhaustedError, match=r"LM call 3 \(0-based; an extract prompt\)"):
            rlm(text="hello brave world")  # the recorded call never needed the extract fallback
        # Iterations 3 and 4 are still unserved, but a completion is only ever served to its own iteration.
        with pytest.raises(ReplayExhaustedError, match=r"LM call 4 \(0-based; an action prompt for iteration 1\)"):
            rlm(text="hello brave world")
        lm.reset()
        events.remove_all(stop_after_two)
        assert rlm(text="hello brave world").answer == ANSWER
