"""A local OpenAI-compatible chat-completions server that keeps a bill: real LM clients in tests and benchmarks.

[`LocalOpenAIServer`][rlm_events.local_openai.LocalOpenAIServer] answers `POST /v1/chat/completions` on `127.0.0.1` (a
free port) the way an
OpenAI-compatible provider does, so `dspy.LM("openai/<model>", api_base=server.base_url, api_key="x")` drives
the real LiteLLM client against it: JSON answers with a `usage` block, SSE streams (with the final usage chunk
when the request asks `stream_options.include_usage`), error answers (429, 500, a delay past the client's
timeout) scheduled per request index for LiteLLM's retries, and answers without `usage`. Every request it billed
is logged in [`LocalOpenAIServer.bill`][rlm_events.local_openai.LocalOpenAIServer.bill], which a test compares with what
the client side counted.

Standard library only (`http.server` and threads): importing it costs nothing and needs no dependency.

**Token counts** are deterministic and the same streamed or not: `prompt_tokens` is the number of characters of
the request's message contents (text parts of multi-part contents included) divided by 4, rounded down;
`completion_tokens` is `max(1, len(reply) // 4)`; `total_tokens` their sum.

**What is billed.** A `200` answer is billed (its tokens, and its cost when the model has a price), whether or not
it carried a `usage` block (a provider bills what it served; `BillRecord.usage_sent` says whether the client
could see it). An error answer (any status but 200, whatever its delay) bills nothing and is logged with its status
and zero tokens. A 200 answer delayed past the client's timeout is still billed (the client cannot count it: do
not schedule one where totals are compared; schedule an error with a delay instead).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._bill import NO_USAGE, Bill, BillRecord, Reply, count_completion_tokens, count_prompt_tokens, error

Replies = Sequence["str | Reply"] | Callable[[dict[str, Any]], "str | Reply"]
CHUNK_CHARS = 16  # characters per streamed content chunk (about 4 tokens, as providers send a few at a time)


class LocalOpenAIServer:
    """An OpenAI-compatible chat-completions server on `127.0.0.1` that logs what it billed.

    Args:
        replies: what to answer: a list of texts (or [`Reply`][rlm_events.local_openai._bill.Reply]), taken in order by
            the requests that get a
            scripted reply (the last one repeats), or a function of the request's JSON body returning one.
            Replies must be in the format the client's DSPy adapter parses: see
            [`rlm_events.scripted.adapter_reply()`][rlm_events.scripted.adapter_reply] and
            [`scripted()`][rlm_events.local_openai.LocalOpenAIServer.scripted].
        faults: per request index (0-based, in arrival order, counting every request), a
            [`Reply`][rlm_events.local_openai._bill.Reply] that
            replaces the scripted answer's options: [`error()`][rlm_events.local_openai._bill.error] (429, 500, a delay
            past the client's timeout),
            [`NO_USAGE`][rlm_events.local_openai._bill.NO_USAGE], or any other knob. A fault with `text=None` that
            answers 200 uses the scripted
            reply; an error answer does not consume one.
        prices: USD per million tokens per model name as the client sends it (`"gpt-4o-mini"` for
            `dspy.LM("openai/gpt-4o-mini")`): `{model: (input, output)}`. Records of other models cost `None`.
        delay: the default of every reply's `delay` (see [`Reply`][rlm_events.local_openai._bill.Reply]).
        time_to_first_token: the default of every reply's `time_to_first_token`.
        tokens_per_second: the default of every reply's `tokens_per_second`.

    Use as a context manager, or [`start()`][rlm_events.local_openai.LocalOpenAIServer.start] /
    [`stop()`][rlm_events.local_openai.LocalOpenAIServer.stop]. Thread-safe; handles concurrent requests.
    """

    def __init__(
        self,
        replies: Replies = ("ok",),
        *,
        faults: Mapping[int, Reply] | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
        delay: float = 0.0,
        time_to_first_token: float = 0.0,
        tokens_per_second: float | None = None,
    ) -> None:
        if not callable(replies) and not replies:
            raise ValueError("LocalOpenAIServer: replies must be a non-empty list or a function of the request")
        for model, price in (prices or {}).items():
            if len(price) != 2 or any(not isinstance(p, (int, float)) or p < 0 for p in price):
                raise ValueError(f"LocalOpenAIServer: prices[{model!r}] must be (input, output) USD per 1M tokens >= 0")
        self.replies = replies if callable(replies) else list(replies)
        self.faults: dict[int, Reply] = dict(faults or {})
        self.prices = {model: (float(i), float(o)) for model, (i, o) in (prices or {}).items()}
        self.defaults = Reply(delay=delay, time_to_first_token=time_to_first_token, tokens_per_second=tokens_per_second)
        self.requests: list[dict[str, Any]] = []
        """Every request body received, in arrival order."""
        self._records: list[BillRecord] = []
        self._lock = threading.Lock()
        self._indexes = itertools.count()
        self._scripted = itertools.count()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def scripted(cls, steps: Sequence[Any], **options: Any) -> LocalOpenAIServer:
        """A server answering a `dspy.RLM`'s prompts as [`ScriptedLM`][rlm_events.scripted.ScriptedLM] does (same
        `steps`, `extract` and `sub`; other `options` go to the server), in DSPy's ChatAdapter format."""
        from ..scripted import ScriptedLM  # imports DSPy: only when asked

        lm_options = {k: options.pop(k) for k in ("extract", "sub") if k in options}
        script = ScriptedLM(steps, **lm_options)
        return cls(lambda request: script.answer(request.get("messages") or []), **options)

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LocalOpenAIServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI `api_base`: `http://127.0.0.1:PORT/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalOpenAIServer:
        if self._httpd is None:
            self._stopping.clear()
            handler = type("Handler", (_Handler,), {"owner": self})
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            self._httpd.daemon_threads = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,), name="local-openai", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (delayed answers in progress are cut short)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            self._stopping.set()
            httpd.shutdown()
            httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the bill ---------------------------------------------------------------------------------------------

    @property
    def bill(self) -> Bill:
        """A snapshot of the billing log."""
        with self._lock:
            return Bill(tuple(self._records))

    def reset(self) -> None:
        """Forget the requests and the bill (request indexes and the script start again from 0)."""
        with self._lock:
            self._records.clear()
            self.requests.clear()
            self._indexes = itertools.count()
            self._scripted = itertools.count()

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The server's price of these tokens for `model` (`None`: no price)."""
        price = self.prices.get(model)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000

    # -- answering --------------------------------------------------------------------------------------------

    def _plan(self, request: dict[str, Any]) -> tuple[int, Reply]:
        """The request's index and the full reply to give it."""
        with self._lock:
            index = next(self._indexes)
            self.requests.append(request)
            fault = self.faults.get(index)
            if fault is not None and fault.status != 200:
                return index, replace(fault, text="")
            position = next(self._scripted)
        if callable(self.replies):
            scripted = self.replies(request)
        else:
            scripted = self.replies[min(position, len(self.replies) - 1)]
        reply = scripted if isinstance(scripted, Reply) else replace(self.defaults, text=str(scripted))
        if fault is not None:
            reply = replace(fault, text=fault.text if fault.text is not None else reply.text)
        return index, reply

    def _record(self, index: int, model: str, reply: Reply, streamed: bool, prompt: int, completion: int) -> None:
        billed = reply.status == 200
        prompt, completion = (prompt, completion) if billed else (0, 0)
        cost = self.cost(model, prompt, completion) if billed else 0.0
        record = BillRecord(
            index, model, reply.status, streamed, billed and reply.usage, prompt, completion, prompt + completion, cost
        )
        with self._lock:
            self._records.append(record)


class _Handler(BaseHTTPRequestHandler):
    owner: LocalOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as providers: the client's connection pool is exercised

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's delayed ACK
        # hold the body back ~40 ms on every keep-alive answer.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass

    def _send_json(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            self._send_json(400, {"error": {"message": f"bad JSON: {exc}", "type": "invalid_request_error"}})
            return
        owner = self.owner
        index, reply = owner._plan(request)
        model = str(request.get("model", ""))
        streamed = bool(request.get("stream"))
        if reply.delay and owner._stopping.wait(reply.delay):
            return
        if reply.status != 200:
            owner._record(index, model, reply, streamed, 0, 0)
            kind = "rate_limit_error" if reply.status == 429 else "server_error"
            message = {"error": {"message": f"scripted {reply.status} (request {index})", "type": kind}}
            self._send_json(reply.status, message, {"retry-after": "0", "retry-after-ms": "0"})
            return
        text = reply.text or ""
        prompt, completion = count_prompt_tokens(request.get("messages")), count_completion_tokens(text)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        ident, created = f"chatcmpl-local-{index}", int(time.time())
        # Recorded before the answer is written, so a client that returns as soon as it read it sees it billed.
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        sent = reply.usage and (include_usage if streamed else True)
        owner._record(index, model, replace(reply, usage=sent), streamed, prompt, completion)
        if not streamed:
            answer: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            }
            if sent:
                answer["usage"] = usage
            self._send_json(200, answer)
            return
        self._stream(reply, text, ident, created, model, usage if sent else None)

    def _stream(
        self, reply: Reply, text: str, ident: str, created: int, model: str, usage: dict[str, int] | None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        stopping = self.owner._stopping

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            payload = json.dumps({**chunk, "choices": choices, **extra}).encode()
            self._chunk(b"data: " + payload + b"\n\n")

        if reply.time_to_first_token and stopping.wait(reply.time_to_first_token):
            return
        pieces = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
        pause = CHUNK_CHARS / 4 / reply.tokens_per_second if reply.tokens_per_second else 0.0
        for number, piece in enumerate(pieces):
            if number and pause and stopping.wait(pause):
                return
            delta = {"role": "assistant", "content": piece} if number == 0 else {"content": piece}
            event([{"index": 0, "delta": delta, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if usage is not None:
            event([], usage=usage)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


__all__ = [
    "NO_USAGE",
    "Bill",
    "BillRecord",
    "LocalOpenAIServer",
    "Reply",
    "count_completion_tokens",
    "count_prompt_tokens",
    "error",
]
