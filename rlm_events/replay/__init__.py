"""Record a real `dspy.RLM` call to a JSON file; replay it later without the LM (or an API key).

```pycon
>>> recorder = Recorder().install(events)  # doctest: +SKIP
>>> with dspy.context(lm=real_lm):  # doctest: +SKIP
...     rlm(question="...")
>>> recorder.save("run.json")  # doctest: +SKIP
>>> lm = ReplayLM.from_file("run.json")  # in a test: same code per iteration, same outputs, same answer
>>> with dspy.context(lm=lm):  # doctest: +SKIP
...     fresh_rlm(**lm.recording.input_args)

```

What is recorded
----------------
* **LM completions** ([`RecordedLMCall`][rlm_events.replay.recording.RecordedLMCall]), in the order DSPy made them: the
  action completions of each
  iteration (with the iteration number `N` their prompt showed as `iteration: N/M`), the extract fallback's,
  and every other LM call made during the run (`llm_query` from the code, an LM called by a tool or middleware),
  with their `usage` and `cost`.
* **Tool results** ([`RecordedToolCall`][rlm_events.replay.recording.RecordedToolCall]): name, arguments and result (or
  error) of every tool call, seen by
  a `tool_call` middleware.
* The inputs, the final trajectory and outputs (or the error), to compare a replay with.

How the LM side is recorded, and why that way
---------------------------------------------
The [`Recorder`][rlm_events.replay.recorder.Recorder] reads the completions DSPy itself logs: every LM call appends an
entry (`messages`,
`outputs`, `usage`, `cost`) to the LM's `history` list. Nothing wraps or replaces your LM, so you record
with the very LM object (and adapter, cache and callbacks) you use in production. At each stage event of a run
the `LMHistoryWatch` takes the entries appended since the run's previous event: an entry whose prompt
carries `iteration: N/M` is an action completion, one that arrived during the `extract` stage is an extract
completion, anything else is an *other* call (`kind="sub"`).

Limits, checked rather than assumed (a recording that fails a check lists it in
[`Recording.problems`][rlm_events.replay.recording.Recording.problems] and
refuses to be saved or replayed):

* DSPy must keep LM history (`dspy.settings.disable_history` off, `max_history_size` > 0).
* A history window is only attributed to a run when no other run watched by the same recorder used the same LM
  instance meanwhile; give concurrent runs their own LM (`lm.copy()`) to record them at the same time. Calls
  made on the same LM instance by code the recorder does not watch cannot be detected; action completions are
  cross-checked against the iteration number in their prompt.

How replay serves completions
-----------------------------
[`ReplayLM`][rlm_events.replay.replay_lm.ReplayLM] is a `dspy.BaseLM` (the legacy `forward`/`aforward` interface every
supported DSPy
accepts, like [`rlm_events.testing.ScriptedLM`][rlm_events.testing.ScriptedLM]). For each request it serves the first
unserved recorded
completion, chosen in this order: (1) a recorded call with exactly the same messages; (2) for an action prompt,
the next completion recorded for the same iteration number (prompts legitimately differ when your middleware
changes what the LM sees); (3) for an extract prompt, the next extract completion; (4) the next other call.
Nothing left raises [`ReplayExhaustedError`][rlm_events.replay.recording.ReplayExhaustedError] naming the 0-based call
index. One `ReplayLM` replays one
call; [`ReplayLM.reset()`][rlm_events.replay.replay_lm.ReplayLM.reset] rewinds it.

[`ReplayTools`][rlm_events.replay.replay_tools.ReplayTools] is a `tool_call` middleware that serves the recorded tool
results instead of calling the
tools, so `llm_query` answers replay even without the sub-LM. Install it after your own `tool_call`
middleware (innermost), where the real call would happen; likewise install the
[`Recorder`][rlm_events.replay.recorder.Recorder] last to record
what the real tools returned.
"""

from ..lm_history import LMHistoryWatch as LMHistoryWatch
from ..lm_history import lms_of as lms_of
from ..lm_history import module_label
from ..lm_usage import usage_of as usage_of
from .recorder import Recorder
from .recording import FORMAT, RecordedLMCall, RecordedToolCall, Recording, RecordingError, ReplayExhaustedError
from .replay_lm import ReplayLM
from .replay_tools import ReplayTools

__all__ = [
    "FORMAT",
    "RecordedLMCall",
    "RecordedToolCall",
    "Recorder",
    "Recording",
    "RecordingError",
    "ReplayExhaustedError",
    "ReplayLM",
    "ReplayTools",
    "module_label",
]
