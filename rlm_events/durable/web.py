"""A small local web page for deciding suspended steps: `python -m rlm_events durable serve --store ...`.

Standard library only (`http.server`), bound to `127.0.0.1` by default. The page lists every step a suspended run
waits a decision on, with its code (or tool call), the run's history so far and the reviewer's note, and a form to
approve, edit or reject it; a decision is recorded with [`decide()`][rlm_events.durable.decide] and a worker resumes
the run. Forms carry a per-server token, so a page of another site cannot post decisions through the browser.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from .control import decide
from .decisions import Decision, decision_from_json
from .errors import DurableError
from .store import Store, StoredRun

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222 }
.step { border: 1px solid #ccc; border-radius: 6px; padding: 1em; margin: 1em 0 }
pre, textarea { font: 13px ui-monospace, monospace; background: #f6f6f6; padding: .5em; width: 100%;
  box-sizing: border-box; white-space: pre-wrap }
.history { color: #555 } .note { font-style: italic } .message { background: #eef; padding: .5em }
form.decision { display: inline-block; margin: .3em 1em .3em 0; vertical-align: top }
"""


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), quote=True)


def _step_html(run: StoredRun, token: str) -> str:
    pending = run.pending or {}
    kind = pending.get("kind", "?")
    iteration = int(pending.get("iteration") or 0) + 1
    if kind == "tool":
        call = (
            f"{pending.get('name')}(args={json.dumps(pending.get('args'))}, kwargs={json.dumps(pending.get('kwargs'))})"
        )
        what = f"<h3>Tool call in iteration {iteration}</h3><pre class='call'>{_e(call)}</pre>"
        edit_field = (
            f"<label>kwargs (JSON)<textarea name='kwargs' rows='3'>{_e(json.dumps(pending.get('kwargs') or {}))}"
            "</textarea></label>"
        )
    else:
        what = f"<h3>Code of iteration {iteration}</h3><pre class='code'>{_e(pending.get('code', ''))}</pre>"
        edit_field = f"<label>code<textarea name='code' rows='6'>{_e(pending.get('code', ''))}</textarea></label>"
    history = "".join(
        f"<details><summary>iteration {i + 1}</summary><pre>{_e(entry.get('code', ''))}</pre>"
        f"<pre>{_e(entry.get('output', ''))}</pre></details>"
        for i, entry in enumerate(pending.get("history") or [])
    )
    hidden = (
        f"<input type='hidden' name='run_id' value='{_e(run.run_id)}'>"
        f"<input type='hidden' name='token' value='{token}'>"
    )
    note = f"<p class='note'>{_e(pending.get('note'))}</p>" if pending.get("note") else ""
    reasoning = f"<p>{_e(pending.get('reasoning'))}</p>" if pending.get("reasoning") else ""
    return (
        f"<div class='step' data-run='{_e(run.run_id)}' data-kind='{_e(kind)}'><div>run <code>{_e(run.run_id)}</code>"
        f" ({_e(run.meta.get('module', ''))})</div>{note}{reasoning}{what}"
        f"<div class='history'>{history}</div>"
        f"<form class='decision approve' method='post' action='/decide'>{hidden}"
        "<input type='hidden' name='action' value='approve'><button type='submit'>Approve</button></form>"
        f"<form class='decision reject' method='post' action='/decide'>{hidden}"
        "<input type='hidden' name='action' value='reject'><input name='reason' placeholder='reason the LM reads'>"
        "<button type='submit'>Reject</button></form>"
        f"<form class='decision edit' method='post' action='/decide'>{hidden}"
        f"<input type='hidden' name='action' value='edit'>{edit_field}"
        "<button type='submit'>Edit and run</button></form>"
        "</div>"
    )


def page(store: Store, token: str, message: str = "") -> str:
    """The page: every suspended step without a decision, newest first."""
    waiting = [run for run in store.runs("suspended") if run.decision is None]
    steps = "".join(_step_html(run, token) for run in waiting) or "<p id='empty'>No step waits for a decision.</p>"
    shown = f"<p class='message'>{_e(message)}</p>" if message else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>rlm-events: pending decisions</title>"
        f"<style>{_STYLE}</style></head><body><h1>Pending decisions</h1>{shown}{steps}</body></html>"
    )


def decision_of(form: dict[str, str]) -> Decision:
    """The decision a posted form asks for; `ValueError` naming what is wrong."""
    data: dict[str, Any] = {"action": form.get("action"), "reason": form.get("reason")}
    if "kwargs" in form:
        data["kwargs"] = json.loads(form["kwargs"])
        if not isinstance(data["kwargs"], dict):
            raise ValueError("kwargs must be a JSON object")
    if "code" in form:
        data["code"] = form["code"].replace("\r\n", "\n")  # browsers send a textarea's lines with CRLF
    return decision_from_json(data)


class _Handler(BaseHTTPRequestHandler):
    store: Store
    token: str

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass

    def _send(self, status: int, body: str, extra: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        headers = {
            "Content-Type": "text/html; charset=utf-8",
            "Content-Length": str(len(data)),
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            **(extra or {}),
        }
        self.send_response(status)
        for header in headers.items():
            self.send_header(*header)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/":
            self._send(404, "not found")
            return
        message = parse_qs(url.query).get("message", [""])[0]
        try:
            self._send(200, page(self.store, self.token, message))
        except DurableError as exc:
            self._send(503, f"<p>{_e(str(exc))}</p>")

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/decide":
            self._send(404, "not found")
            return
        length = int(self.headers.get("Content-Length") or 0)
        fields = parse_qs(self.rfile.read(min(length, 1_000_000)).decode("utf-8"), keep_blank_values=True)
        form = {k: v[0] for k, v in fields.items()}
        if not secrets.compare_digest(form.get("token", ""), self.token):
            self._send(403, "<p>stale or foreign form: reload the page</p>")
            return
        run_id = form.get("run_id", "")
        try:
            decision = decision_of(form)
            decide(self.store, run_id, decision)
            message = f"run {run_id}: {form.get('action')} recorded; a worker resumes it"
        except (ValueError, DurableError) as exc:
            message = f"run {run_id}: {exc}"
        self._send(303, "", {"Location": "/?" + urlencode({"message": message})})


class DecisionServer:
    """The page's server on `host:port` (`port=0`: any free port); `url` once started: `start()` / `stop()`, or
    [`serving()`][rlm_events.durable.web.serving] for a block."""

    def __init__(self, store: Store, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store, self.host, self.port = store, host, port
        self.token = secrets.token_urlsafe(16)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://host:port/` of the started server (`RuntimeError` before `start()`)."""
        httpd = self._httpd
        port = httpd.server_address[1] if httpd is not None else None
        if port is None:
            raise RuntimeError("DecisionServer is not started")
        return f"http://{self.host}:{port}/"

    def _server(self) -> ThreadingHTTPServer:
        handler = type("Handler", (_Handler,), {"store": self.store, "token": self.token})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        return self._httpd

    def start(self) -> DecisionServer:
        self._thread = threading.Thread(target=self._server().serve_forever, name="rlm-decisions", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self._server().serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving (a no-op when not started)."""
        if self._httpd is None:
            return
        if self._thread is not None:  # serving in its own thread (start()); serve_forever() has returned already
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = self._thread = None


@contextmanager
def serving(store: Store, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[DecisionServer]:
    """A started [`DecisionServer`][rlm_events.durable.web.DecisionServer] for the block, stopped after it."""
    server = DecisionServer(store, host=host, port=port).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["DecisionServer", "decision_of", "page", "serving"]
