"""The span tree of instrumented `dspy.RLM` calls, for any tracing backend: the driver the OpenTelemetry and
MLflow taps share (and whose OpenTelemetry backend Speculate's spans use).

One `SpanTree` per call, kept by run id in a `SpanForest` (one per tap):

```text
root (the call)
├── iteration n                 current from pre_iteration to post_iteration
│   ├── generate_action         the step: current while the LM writes the code
│   └── execute_code            the step: current while the code runs
│       └── tool                current while the tool runs (:meth:`SpanForest.around`)
└── extract                     current while the extractor runs (:meth:`SpanForest.around`)
```

Guarantees:

* A span opened by a stage is made current (the backend's context) until the stage that closes it; closing a span
  undoes what was made current after it too, innermost first, so the context is always restored.
* Closing a step or an iteration records the LM usage since it opened (`SpanBackend.set_usage()`, from the
  run's one meter); a failure passed to a close marks the span failed (`SpanBackend.fail()`).
* `SpanForest.finish()` (on `run_end`) forgets the call first, then ends every span still open, whatever
  failed meanwhile: no per-call state outlives its call, and the root ends last (when the tree owns it).
* The driver knows no backend: a backend implements `SpanBackend` (start a span with its parent and
  attributes, make it current and undo that, record its usage, mark it failed, record an error, end it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Protocol, TypeVar

import dspy

from ..lm_usage import Usage

N = TypeVar("N")
R = TypeVar("R")

Attributes = Mapping[str, Any]
"""A span's attributes, as the driver passes them to a backend."""

Tokens = tuple[int, int, int]
"""Input, output and total tokens of a run so far: what a span's usage is measured from."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, in exact integer arithmetic (`timestamp() * 1e9` rounds)."""
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time, as datetime.timestamp() assumes
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def tokens_of(usage: Usage) -> Tokens:
    return usage.prompt_tokens, usage.completion_tokens, usage.tokens


def action_model(module: Any) -> str | None:
    """The model that writes a call's code: its `generate_action` LM's, else the configured LM's."""
    lm = getattr(getattr(module, "generate_action", None), "lm", None) or dspy.settings.lm
    model = getattr(lm, "model", None)
    return model if isinstance(model, str) else None


def provider_of(model: str | None) -> str | None:
    """`openai` for `openai/gpt-4o-mini` (LiteLLM's provider prefix); `None` when the model has none."""
    if model and "/" in model:
        return model.split("/", 1)[0] or None
    return None


class SpanBackend(Protocol):
    """What the driver asks of a tracing backend. `role` is what a span stands for (`run`, `iteration`,
    `generate_action`, `execute_code`, `tool` or `extract`); spans and tokens are the backend's own.
    Backends subclass it (for `record_error()`, which both OpenTelemetry and MLflow spans support as is)."""

    def start(
        self, role: str, name: str, parent: Any, attributes: Attributes, inputs: Any = None, start_ns: int | None = None
    ) -> Any:
        """A started span, child of `parent` (of the span current here when `parent` is `None`)."""
        ...

    def make_current(self, span: Any) -> Any:
        """Make `span` current in this context; returns the token `restore()` takes to undo it."""
        ...

    def restore(self, token: Any) -> None: ...

    def set_usage(self, span: Any, since: Tokens, now: Tokens) -> None:
        """Record on `span` the LM usage between two readings of the run's meter (nothing if there was none)."""
        ...

    def fail(self, span: Any, error: BaseException) -> None:
        """Mark `span` failed because of `error` (status ERROR)."""
        ...

    def record_error(self, span: Any, error: BaseException) -> None:
        """Record `error` on `span` (the exception itself) and mark it failed."""
        span.record_exception(error)
        self.fail(span, error)

    def end(self, span: Any, outputs: Any = None) -> None: ...


class SpanTree(Generic[N]):
    """The open spans of one call, what is current in the call's context, and the usage marks of its open spans.
    `notes` is the tap's own per-call record; it lives exactly as long as the tree."""

    __slots__ = (
        "attached",
        "iteration",
        "iteration_mark",
        "notes",
        "own_root",
        "root",
        "run_id",
        "step",
        "step_kind",
        "step_mark",
        "usage",
    )

    def __init__(self, run_id: str, root: Any, usage: Usage, notes: N, own_root: bool) -> None:
        self.run_id, self.root, self.usage, self.notes, self.own_root = run_id, root, usage, notes, own_root
        self.attached: list[tuple[Any, Any]] = []  # (span, token) made current in the call's context, innermost last
        self.iteration: Any = None
        self.step: Any = None  # the open generate_action or execute_code span
        self.step_kind = ""
        self.iteration_mark = self.step_mark = tokens_of(usage)

    def tokens(self) -> Tokens:
        return tokens_of(self.usage)

    @property
    def code_span(self) -> Any:
        """The open `execute_code` span, if any."""
        return self.step if self.step_kind == "execute_code" else None

    def tool_parent(self) -> Any:
        """Where a tool call's span goes: the running code's span, else the iteration's, else the root."""
        return self.code_span or self.iteration or self.root


class SpanForest(Generic[N]):
    """The span trees of a tap's calls in flight, by run id, and the operations on them (see the module
    docstring). `owner` names the tap in log messages; `logger` is where its failures go."""

    def __init__(self, backend: SpanBackend, owner: str, logger: logging.Logger) -> None:
        self.backend = backend
        self.owner = owner
        self.logger = logger
        self._lock = threading.Lock()
        self._trees: dict[str, SpanTree[N]] = {}

    def __len__(self) -> int:
        return len(self._trees)

    # -- a call's tree --------------------------------------------------------------------------------------

    def start_root(self, started_at: datetime, name: str, attributes: Mapping[str, Any], inputs: Any = None) -> Any:
        """A call's span, started when the call did, child of the span current here (the call nests in the
        caller's trace)."""
        return self.backend.start("run", name, None, attributes, inputs=inputs, start_ns=epoch_ns(started_at))

    def plant(self, run_id: str, root: Any, usage: Usage, notes: N, *, own_root: bool = True) -> SpanTree[N]:
        """Keep the tree of a starting call; an owned root is made current in the call's context."""
        tree = SpanTree(run_id, root, usage, notes, own_root)
        with self._lock:
            self._trees[run_id] = tree
        if own_root:
            self._push(tree, root)
        return tree

    def get(self, run_id: str) -> SpanTree[N] | None:
        with self._lock:
            return self._trees.get(run_id)

    def finish(
        self,
        tree: SpanTree[N],
        error: BaseException | None,
        annotate: Callable[[], None],
        outputs: Callable[[], Any] | None = None,
    ) -> None:
        """End a call's tree (its `run_end`): forget it, close the open iteration (failed with `error`), let
        `annotate` set the root's attributes, record `error` on the root; then, whatever failed, undo
        everything still current and end the root if the tree owns it (with `outputs()` when it succeeded)."""
        with self._lock:
            self._trees.pop(tree.run_id, None)
        try:
            self.close_iteration(tree, error=error)
            annotate()
            if error is not None:
                self.backend.record_error(tree.root, error)
        finally:
            while tree.attached:  # whatever is still current, innermost first; the root last
                self._pop(tree, tree.attached[-1][0])
            if tree.own_root:
                self.backend.end(tree.root, outputs() if outputs is not None and error is None else None)

    # -- the iteration and its steps ------------------------------------------------------------------------

    def open_iteration(self, tree: SpanTree[N], name: str, attributes: Mapping[str, Any], inputs: Any = None) -> Any:
        """Close what the loop left open, then open and make current the iteration span (a child of the root)."""
        self.close_iteration(tree)
        iteration = self.backend.start("iteration", name, tree.root, attributes, inputs=inputs)
        tree.iteration, tree.iteration_mark = iteration, tree.tokens()
        self._push(tree, iteration)
        return iteration

    def open_step(
        self, tree: SpanTree[N], kind: str, name: str, attributes: Mapping[str, Any], inputs: Any = None
    ) -> Any:
        """Open and make current the `kind` step (`generate_action` or `execute_code`) in the iteration."""
        span = self.backend.start(kind, name, tree.iteration or tree.root, attributes, inputs=inputs)
        tree.step, tree.step_kind, tree.step_mark = span, kind, tree.tokens()
        self._push(tree, span)
        return span

    def close_step(self, tree: SpanTree[N], outputs: Any = None, error: BaseException | None = None) -> None:
        span, tree.step = tree.step, None
        if span is not None:
            tree.step_mark = self._close(tree, span, tree.step_mark, outputs, error)

    def close_iteration(self, tree: SpanTree[N], outputs: Any = None, error: BaseException | None = None) -> None:
        self.close_step(tree, error=error)
        span, tree.iteration = tree.iteration, None
        if span is not None:
            tree.iteration_mark = self._close(tree, span, tree.iteration_mark, outputs, error)

    def _close(self, tree: SpanTree[N], span: Any, since: Tokens, outputs: Any, error: BaseException | None) -> Tokens:
        """Undo `span`'s being current, record its usage since `since`, end it; returns the new mark."""
        self._pop(tree, span)
        now = tree.tokens()
        try:
            self.backend.set_usage(span, since, now)
            if error is not None:
                self.backend.fail(span, error)
        finally:
            self.backend.end(span, outputs)
        return now

    def measured(self, tree: SpanTree[N], span: Any, since: Tokens) -> None:
        """Record on `span` (an extract span) the usage since `since`; the next span measures from now."""
        now = tree.tokens()
        self.backend.set_usage(span, since, now)
        tree.iteration_mark = tree.step_mark = now

    # -- middleware: a span current while the tool or the extractor runs ----------------------------------------

    def around(
        self,
        what: str,
        start: Callable[[], Any],
        call: Callable[[], R],
        settle: Callable[[Any, R | None, BaseException | None], Any] | None = None,
    ) -> R:
        """Run `call` with the span `start()` returns current (no span if it returns `None`). Once it
        returned or raised: its exception recorded on the span, `settle(span, result, error)` (the span's
        outputs), the span ended. A failure of the tracing is logged (naming `what`) and never reaches the call.
        """
        try:
            span = start()
            if span is None:
                return call()
            token = self.backend.make_current(span)
        except Exception:
            self.logger.exception("%s could not start the span of %s", self.owner, what)
            return call()
        result: R | None = None
        failed: BaseException | None = None
        try:
            result = call()
            return result
        except BaseException as exc:
            failed = exc
            raise
        finally:
            try:
                self.backend.restore(token)
                if failed is not None:
                    self.backend.record_error(span, failed)
                outputs = settle(span, result, failed) if settle is not None else None
                self.backend.end(span, outputs if failed is None else None)
            except Exception:
                self.logger.exception("%s could not end the span of %s", self.owner, what)

    # -- spans current in the call's context ----------------------------------------------------------------

    def _push(self, tree: SpanTree[N], span: Any) -> None:
        """Make `span` current in this (the call's) context, until `_pop()`."""
        tree.attached.append((span, self.backend.make_current(span)))

    def _pop(self, tree: SpanTree[N], span: Any) -> None:
        """Undo `_push()` of `span` and of everything pushed after it, innermost first."""
        if not any(attached is span for attached, _ in tree.attached):
            return
        while tree.attached:
            attached, token = tree.attached.pop()
            try:
                self.backend.restore(token)
            except Exception:
                self.logger.debug("%s could not detach a span", self.owner, exc_info=True)
            if attached is span:
                return


__all__ = [
    "Attributes",
    "SpanBackend",
    "SpanForest",
    "SpanTree",
    "Tokens",
    "action_model",
    "epoch_ns",
    "provider_of",
    "tokens_of",
]
