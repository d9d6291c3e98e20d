"""A scripted LM: [`ScriptedLM`][rlm_events.scripted.ScriptedLM] plays a script of code steps to a `dspy.RLM` (no API
key, deterministic).

The demo runs on it, [`scripted()`][rlm_events.local_openai.LocalOpenAIServer.scripted] serves it over HTTP, and tests
write RLM middleware against it ([`rlm_events.testing`][rlm_events.testing] re-exports it).
[`adapter_reply()`][rlm_events.scripted.adapter_reply] is the completion
format it answers in (DSPy's ChatAdapter).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import dspy

# The BaseLM.forward() interface is the one every supported DSPy release (3.1 → 3.4) accepts; DSPy 3.4 calls it
# legacy (a DeprecationWarning per call, hidden by Python's default filters): the user's filters are theirs.

_ITERATION = re.compile(r"\[\[ ## iteration ## \]\]\s*(\d+)\s*/\s*(\d+)")
_FENCED = re.compile(r"`code`[^\n]*```")  # the code field's description asks for a markdown code block
Step = str | tuple[str, str] | Callable[[int], "str | tuple[str, str]"]


def adapter_reply(values: Mapping[str, Any]) -> str:
    """A completion in DSPy's ChatAdapter format giving each output field its value (non-strings as JSON):
    `[[ ## reasoning ## ]]` ... `[[ ## completed ## ]]`. What [`ScriptedLM`][rlm_events.scripted.ScriptedLM] answers,
    and what a
    [`LocalOpenAIServer`][rlm_events.local_openai.LocalOpenAIServer] must answer a `dspy.LM` with."""
    parts = [f"[[ ## {name} ## ]]\n{v if isinstance(v, str) else json.dumps(v)}" for name, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


class ScriptedLM(dspy.BaseLM):
    """An LM that plays a script.

    Args:
        steps: the code of each iteration, in order. A step is a code string, a `(reasoning, code)` pair, or a
            function of the 0-based iteration returning either. Iterations past the end repeat the last step.
        extract: outputs the extract fallback returns (e.g. `{"answer": "42"}`), or a function of the prompt
            text returning such a dict.
        sub: the answer to `llm_query(prompt)`: a string, or a function of the prompt.
        cost_per_1k_tokens: USD charged per 1000 tokens (recorded in `history[i]["cost"]`).
    """

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        extract: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
        sub: str | Callable[[str], str] = "ok",
        cost_per_1k_tokens: float = 0.0,
        model: str = "scripted",
    ) -> None:
        super().__init__(model=model, model_type="chat", temperature=0.0, max_tokens=1000, cache=False)
        if not isinstance(getattr(self, "callbacks", None), list):  # BaseLM sets it from DSPy 3.3 on, dspy.LM always
            self.callbacks: list[Any] = []
        if not steps:
            raise ValueError("ScriptedLM needs at least one step")
        self.steps = list(steps)
        self.extract = extract
        self.sub = sub
        self.cost_per_1k_tokens = cost_per_1k_tokens

    def step(self, index: int) -> tuple[str, str]:
        """The `(reasoning, code)` of iteration `index` (0-based)."""
        step = self.steps[min(index, len(self.steps) - 1)]
        if callable(step):
            step = step(index)
        return step if isinstance(step, tuple) else (f"Step {index + 1}.", step)

    def answer(self, messages: list[dict[str, Any]]) -> str:
        """The raw completion text for `messages`."""
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        last = str(messages[-1].get("content", "")) if messages else ""
        if "[[ ## code ## ]]" in system:
            found = _ITERATION.search(last)
            reasoning, code = self.step(int(found.group(1)) - 1 if found else 0)
            # As the prompt asks: DSPy 3.1.3+ describe the code field as a markdown block, 3.1.2 as plain code.
            return adapter_reply(
                {"reasoning": reasoning, "code": f"```python\n{code}\n```" if _FENCED.search(system) else code}
            )
        if "[[ ## repl_history ## ]]" in system:
            outputs = self.extract(last) if callable(self.extract) else self.extract
            if outputs is None:
                names = re.findall(r"\[\[ ## (\w+) ## \]\]", system.split("[[ ## repl_history ## ]]")[-1])
                outputs = {n: "extracted" for n in names if n not in ("completed", "variables_info", "repl_history")}
            return adapter_reply(outputs)
        return self.sub(last) if callable(self.sub) else self.sub

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        messages = messages or [{"role": "user", "content": prompt or ""}]
        text = self.answer(messages)
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4
        completion_tokens = max(1, len(text) // 4)
        total = prompt_tokens + completion_tokens
        message = SimpleNamespace(content=text, role="assistant", tool_calls=None)
        return SimpleNamespace(
            choices=[SimpleNamespace(message=message, finish_reason="stop", index=0)],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total},
            model=self.model,
            _hidden_params={"response_cost": total / 1000 * self.cost_per_1k_tokens},
        )

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        await asyncio.sleep(0)  # a real LM call suspends the caller (so concurrent calls interleave) on any DSPy
        return self.forward(prompt=prompt, messages=messages, **kwargs)


__all__ = ["ScriptedLM", "Step", "adapter_reply"]
