"""The [`ReplayLM`][rlm_events.replay.replay_lm.ReplayLM]: a `dspy.BaseLM` that answers with a recording's
completions."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dspy

from ._requests import iteration_in_prompt, looks_like_extract, request_messages, request_sha256
from .recording import RecordedLMCall, Recording, ReplayExhaustedError

# ReplayLM implements BaseLM.forward(), the interface every supported DSPy release (3.1 → 3.4) accepts; DSPy 3.4
# calls it legacy (a DeprecationWarning per call, hidden by Python's default filters): the user's filters are theirs.


def _response(call: RecordedLMCall, model: str) -> Any:
    """An OpenAI-shaped response carrying the recorded outputs, usage and cost (what `forward` returns)."""
    choices = []
    for i, output in enumerate(call.outputs):
        fields = output if isinstance(output, dict) else {"text": output}
        message = SimpleNamespace(
            content=fields.get("text"),
            role="assistant",
            tool_calls=fields.get("tool_calls"),
            reasoning_content=fields.get("reasoning_content"),
        )
        choices.append(SimpleNamespace(message=message, finish_reason="stop", index=i))
    return SimpleNamespace(
        choices=choices,
        usage=dict(call.usage),
        model=call.model or model,
        _hidden_params={"response_cost": call.cost},
    )


class ReplayLM(dspy.BaseLM):
    """A `dspy.BaseLM` that answers with the completions of a [`Recording`][rlm_events.replay.recording.Recording], in
    the order described in the
    package docstring; it reports the recorded `usage` and `cost`, so budgets behave as in the recorded run.

    Thread-safe. `served` lists, per request, the index of the recorded call it got.
    """

    def __init__(self, recording: Recording, *, model: str | None = None) -> None:
        recording.check()
        recorded_model = next((c.model for c in recording.lm_calls if c.model), None)
        super().__init__(
            model=model or recorded_model or "replay", model_type="chat", temperature=0.0, max_tokens=1000, cache=False
        )
        self.recording = recording
        self._lock = threading.Lock()
        self.served: list[int] = []
        self._used: set[int] = set()

    @classmethod
    def from_file(cls, path: str | Path, *, model: str | None = None) -> ReplayLM:
        """A ReplayLM for the recording at `path` (see
        [`Recording.load()`][rlm_events.replay.recording.Recording.load])."""
        return cls(Recording.load(path), model=model)

    def reset(self) -> None:
        """Serve the recording again from the start."""
        with self._lock:
            self.served.clear()
            self._used.clear()

    def remaining(self) -> list[RecordedLMCall]:
        """The recorded completions not served yet."""
        with self._lock:
            return [c for c in self.recording.lm_calls if c.index not in self._used]

    def _pick(self, messages: list[dict[str, Any]]) -> tuple[RecordedLMCall | None, str]:
        unused = [c for c in self.recording.lm_calls if c.index not in self._used]
        fingerprint = request_sha256(messages)
        same = next((c for c in unused if c.request_sha256 == fingerprint), None)
        if same is not None:
            return same, "an identical request"
        iteration = iteration_in_prompt(messages)
        if iteration is not None:
            what = f"an action prompt for iteration {iteration}"
            return next((c for c in unused if c.kind == "action" and c.prompt_iteration == iteration), None), what
        if looks_like_extract(messages):
            return next((c for c in unused if c.kind == "extract"), None), "an extract prompt"
        return next((c for c in unused if c.kind == "sub"), None), "a sub-LLM / other prompt"

    def _exhausted(self, index: int, what: str) -> ReplayExhaustedError:
        calls = self.recording.lm_calls
        actions = sorted({c.prompt_iteration for c in calls if c.kind == "action" and c.prompt_iteration})
        extract, sub = (sum(c.kind == kind for c in calls) for kind in ("extract", "sub"))
        counts = f"action completions for iterations {actions or 'none'}, {extract} extract and {sub} other"
        return ReplayExhaustedError(
            f"ReplayLM has no recorded completion left for LM call {index} (0-based; {what}). "
            f"The recording of run {self.recording.run_id} holds {counts}; {len(self._used)} of its "
            f"{len(calls)} completions were served. The replay diverged from the recorded run.",
            call_index=index,
        )

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        request = request_messages(prompt, messages)
        with self._lock:
            index = len(self.served)
            call, what = self._pick(request)
            if call is None:
                self.served.append(-1)
                raise self._exhausted(index, what)
            self._used.add(call.index)
            self.served.append(call.index)
        return _response(call, self.model)

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        return self.forward(prompt=prompt, messages=messages, **kwargs)
