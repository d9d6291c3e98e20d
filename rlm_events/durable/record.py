"""What a durable run's steps say, read back for a resume: per iteration its action, tool results and history
entry ([`RunRecord`][rlm_events.durable.record.RunRecord]); and the run's metadata, checked against the RLM asked
to resume it."""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
from dataclasses import dataclass, field
from typing import Any

import dspy
import pydantic

from ..builtin import RLM_BUILTIN_TOOLS
from ..lm_history import module_label
from ..replay._json import jsonable
from ..runtime import iteration_limit
from .errors import RecordMismatchError
from .store import Step


def meta_of(rlm: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a run's record says about the RLM that made it, and its inputs (JSON)."""
    signature = getattr(rlm, "signature", None)
    return {
        "module": module_label(rlm),
        "signature": str(getattr(signature, "signature", signature)),
        "tools": sorted(getattr(rlm, "tools", {}) or {}),
        "dspy": dspy.__version__,
        "max_iters": iteration_limit(rlm),
        "inputs": inputs,
    }


def typed_inputs(rlm: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """A record's JSON inputs as `rlm`'s signature types them: a value the JSON round trip turned into a dict or list
    (a pydantic model, a list of them: PredictRLM's `File`) is validated back into its field's type; a value that
    does not validate, and every other value, is passed as recorded."""
    fields = getattr(getattr(rlm, "signature", None), "input_fields", None) or {}
    typed = dict(inputs)
    for name, value in inputs.items():
        annotation = getattr(fields.get(name), "annotation", None)
        if isinstance(value, (dict, list)) and annotation not in (None, Any, dict, list):
            with contextlib.suppress(Exception):  # not a type pydantic validates JSON into: as recorded
                typed[name] = pydantic.TypeAdapter(annotation).validate_python(value)
    return typed


def check_matches(run_id: str, meta: dict[str, Any], rlm: Any) -> None:
    """Raise [`RecordMismatchError`][rlm_events.durable.RecordMismatchError] naming the first difference between the
    record of `run_id` and `rlm`: signature, tools, or DSPy major version."""
    now = meta_of(rlm, {})
    if meta.get("signature") != now["signature"]:
        raise RecordMismatchError(
            run_id, f"the record's signature is {meta.get('signature')!r}, this RLM's is {now['signature']!r}"
        )
    if list(meta.get("tools") or []) != now["tools"]:
        raise RecordMismatchError(run_id, f"the record's tools are {meta.get('tools')}, this RLM's are {now['tools']}")
    recorded_major = str(meta.get("dspy", "")).split(".")[0]
    if recorded_major != now["dspy"].split(".")[0]:
        raise RecordMismatchError(
            run_id, f"the record was made with DSPy {meta.get('dspy')}, this process runs DSPy {now['dspy']}"
        )


def canonical(name: str, args: Any, kwargs: Any) -> str:
    """One tool call as comparable text: name and JSON arguments."""
    return json.dumps([name, args, kwargs], sort_keys=True, default=repr, ensure_ascii=False)


def tool_step(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A tool call's step data, before its result: name and arguments as JSON."""
    json_args, _ = jsonable(list(args))
    json_kwargs, _ = jsonable(dict(kwargs))
    return {"name": name, "args": json_args, "kwargs": json_kwargs}


@functools.cache
def _error_class(name: str) -> type[Exception]:
    """A stand-in exception class named `name`, for an error whose own class is not a built-in one."""
    return type(name, (Exception,), {"__module__": "rlm_events.durable"})


def raise_recorded(data: dict[str, Any]) -> None:
    """Raise the error a tool call raised, as the code saw it: same class name (built-in classes reused), same
    message."""
    name = str(data.get("error_type") or "Exception")
    known = vars(builtins).get(name)
    cls = known if isinstance(known, type) and issubclass(known, Exception) else _error_class(name)
    args = data.get("error_args")
    error: Exception | None = None
    with contextlib.suppress(Exception):  # a class whose constructor wants other arguments
        error = cls(*args) if isinstance(args, list) else None
    raise error or cls(str(data.get("error_message") or ""))


@dataclass
class IterationRecord:
    """One iteration as committed. `entry` (its history entry) is `None` while it was in flight."""

    index: int
    reasoning: str = ""
    code: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    """The action's other fields, as the loop's predictor returned them (PredictRLM's `execution_timeout_seconds`)."""
    entry: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)
    used: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.entry is not None

    def unserved(self, name: str, args: Any, kwargs: Any) -> int:
        """How many recorded results of this call (same name and arguments) are still to be served."""
        wanted = canonical(name, args, kwargs)
        return sum(
            1
            for i, tool in enumerate(self.tools)
            if i not in self.used and canonical(tool["name"], tool["args"], tool["kwargs"]) == wanted
        )

    def take_tool(self, name: str, args: Any, kwargs: Any) -> dict[str, Any] | None:
        """The first unserved recorded result of this call (same name and arguments), marked served."""
        wanted = canonical(name, args, kwargs)
        for i, tool in enumerate(self.tools):
            if i not in self.used and canonical(tool["name"], tool["args"], tool["kwargs"]) == wanted:
                self.used.add(i)
                return tool
        return None


@dataclass
class RunRecord:
    """A run's steps by iteration: the complete iterations `0 .. completed-1`, and the one in flight, if any."""

    iterations: dict[int, IterationRecord]
    completed: int
    state: dict[str, Any] | None
    """The per-run state after the last committed step that has it (usage, budget spend)."""
    seq: int

    @classmethod
    def of(cls, steps: list[Step]) -> RunRecord:
        iterations: dict[int, IterationRecord] = {}
        state: dict[str, Any] | None = None
        for step in steps:
            record = iterations.setdefault(step.iteration, IterationRecord(step.iteration))
            if step.kind == "action":
                record.reasoning, record.code = str(step.data.get("reasoning", "")), str(step.data.get("code", ""))
                record.fields = dict(step.data.get("fields") or {})
            elif step.kind == "tool":
                record.tools.append(step.data)
            elif step.kind == "iteration":
                record.entry, record.data = step.data.get("entry") or {}, step.data
            if isinstance(step.data.get("state"), dict):
                state = step.data["state"]
        completed = 0
        while completed in iterations and iterations[completed].complete:
            completed += 1
        kept = {i: r for i, r in iterations.items() if i <= completed}  # nothing after the first gap is used
        if completed in kept and not kept[completed].code:
            del kept[completed]  # tool steps without their action: started afresh
        return cls(kept, completed, state, len(steps))

    def charged_llm_calls(self) -> bool:
        """Whether the record charged sub-LLM calls against DSPy's `max_llm_calls`: its committed count, else (a
        release whose counter rlm-events cannot read) any `llm_query` / `llm_query_batched` result it holds."""
        counted = (self.state or {}).get("llm_calls")
        if isinstance(counted, int):
            return counted > 0
        return any(tool.get("name") in RLM_BUILTIN_TOOLS for it in self.iterations.values() for tool in it.tools)

    def inflight(self) -> IterationRecord | None:
        """The iteration after the complete ones, if its action was committed."""
        return self.iterations.get(self.completed)


__all__ = [
    "IterationRecord",
    "RunRecord",
    "canonical",
    "check_matches",
    "meta_of",
    "raise_recorded",
    "tool_step",
    "typed_inputs",
]
