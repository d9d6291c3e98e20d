"""Render a JSONL trace (see :mod:`rlm_events.taps.jsonl`) as one self-contained HTML page.

``python -m rlm_events view rlm-trace.jsonl -o trace.html`` (or :func:`write_html`). The page needs no network:
CSS and JavaScript are inline and the trace is embedded as JSON in a ``<script type="application/json">`` element,
with ``<``, ``>``, ``&`` and the JavaScript line separators escaped, so nothing in the traced code or outputs
(``</script>`` included) can end the element or inject markup; the page sets all trace text as ``textContent``.

The page shows, per run: a header (id, module, duration, iterations, LM use, outcome), a timeline with one row per
iteration (plus the call's start and end) and one bar per stage event, positioned by time, and, on click of a row
or bar, that iteration's reasoning, code, tool calls and output. A trace holding several runs gets a run selector.
A stage's bar runs from its event to the call's next event, as :class:`~rlm_events.taps.timings.StageTimings`
measures stages (``pre_iteration``: the LM writing the code; ``pre_execution``: the code running); a tool call's
bar ends when the call returned and starts at the event before it.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .stages import Stage

_STAGES = frozenset(s.value for s in Stage)


@dataclass
class Trace:
    """The runs of one trace file, in order of their first event, and how many lines could not be read."""

    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped_lines: int = 0

    @property
    def events(self) -> int:
        return sum(len(events) for events in self.runs.values())


def _is_event(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("run_id"), str)
        and record.get("stage") in _STAGES
        and isinstance(record.get("t_mono"), (int, float))
    )


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a JSONL trace. Lines that are not trace events (blank, cut short by a crash, foreign) are counted in
    ``skipped_lines`` and left out; they never make reading fail."""
    trace = Trace()
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                trace.skipped_lines += 1
                continue
            if not _is_event(record):
                trace.skipped_lines += 1
                continue
            trace.runs.setdefault(record["run_id"], []).append(record)
    return trace


def _script_json(value: Any) -> str:
    """JSON that is inert inside ``<script>``: no ``</script>``, ``<!--`` or line separators can appear."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    for raw, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def render_html(trace: Trace, *, title: str = "rlm-events trace", source: str = "") -> str:
    """The self-contained HTML page for ``trace``. Raises ``ValueError`` when it holds no run."""
    if not trace.runs:
        raise ValueError("the trace holds no rlm-events events (is it a JSONL file written by JsonlTrace?)")
    data = {
        "title": title,
        "source": source,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "skipped_lines": trace.skipped_lines,
        "runs": [{"run_id": run_id, "events": events} for run_id, events in trace.runs.items()],
    }
    parts = {"TITLE": html.escape(title), "STYLE": _STYLE, "SCRIPT": _SCRIPT, "DATA": _script_json(data)}
    # One pass, so text of one part (a title, traced code) is never taken for another part's placeholder.
    return re.sub(r"__(TITLE|STYLE|SCRIPT|DATA)__", lambda m: parts[m.group(1)], _PAGE)


def write_html(trace_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Render the trace at ``trace_path`` to ``out_path`` (default: the same name with ``.html``); return it."""
    source = Path(trace_path)
    target = Path(out_path) if out_path is not None else source.with_suffix(".html")
    page = render_html(read_trace(source), title=f"rlm-events trace: {source.name}", source=source.name)
    target.write_text(page, encoding="utf-8")
    return target


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<header class="top">
  <h1>rlm-events <span class="muted">trace</span></h1>
  <span id="source" class="muted"></span>
  <label id="run-picker" hidden>run <select id="run-select"></select></label>
</header>
<main>
  <p id="warning" class="warning" hidden></p>
  <section id="run-header" class="card"></section>
  <section class="card">
    <div id="legend" class="legend"></div>
    <div id="timeline" class="timeline"></div>
  </section>
  <section id="details" class="card"></section>
</main>
<script type="application/json" id="trace-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

_STYLE = """
:root {
  --bg: #f6f7f9; --card: #fff; --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --sel: #eef2ff;
  --code-bg: #0f172a; --code-ink: #e2e8f0;
  --run_start: #94a3b8; --pre_iteration: #6366f1; --pre_execution: #10b981; --tool_call: #f59e0b;
  --post_execution: #38bdf8; --post_iteration: #cbd5e1; --extract: #a855f7; --run_end: #334155; --error: #ef4444;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; }
.top { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px; background: var(--card);
  border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 2; }
.top h1 { font-size: 18px; margin: 0; }
.top label { margin-left: auto; color: var(--muted); }
.top select { font: inherit; padding: 3px 6px; margin-left: 6px; max-width: 60vw; }
.muted { color: var(--muted); font-weight: normal; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 24px 48px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px;
  margin-bottom: 16px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.warning { background: #fffbeb; border: 1px solid #fcd34d; border-radius: 8px; padding: 8px 12px; }
.run-title { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.run-title .module { font-size: 15px; font-weight: 600; }
.run-id { color: var(--muted); }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
  letter-spacing: .02em; text-transform: uppercase; }
.badge.ok { background: #d1fae5; color: #065f46; }
.badge.error { background: #fee2e2; color: #991b1b; }
.badge.extract { background: #f3e8ff; color: #6b21a8; }
.badge.incomplete { background: #fef3c7; color: #92400e; }
.stats { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 12px 0 0; }
.stats div { min-width: 90px; }
.stats dt { color: var(--muted); font-size: 12px; }
.stats dd { margin: 0; font-size: 18px; font-weight: 600; font-variant-numeric: tabular-nums; }
.answer { margin-top: 12px; padding: 8px 12px; border-radius: 8px; background: #f8fafc; border: 1px solid var(--line); }
.answer.error { background: #fef2f2; border-color: #fecaca; color: #991b1b; }
.answer .field { margin: 2px 0; }
.answer .name { color: var(--muted); margin-right: 6px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 12px; color: var(--muted); margin-bottom: 10px; }
.legend .phase { color: #9ca3af; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 5px;
  vertical-align: -2px; }
.timeline { --label: 64px; --meta: 220px; }
.axis, .row { display: grid; grid-template-columns: var(--label) 1fr var(--meta); align-items: center; }
.axis .ticks { position: relative; height: 20px; border-bottom: 1px solid var(--line); }
.axis .tick { position: absolute; bottom: 3px; transform: translateX(-50%); font-size: 11px; color: var(--muted);
  white-space: nowrap; font-variant-numeric: tabular-nums; }
.row { border-bottom: 1px solid #f1f5f9; cursor: pointer; border-radius: 6px; }
.row:hover { background: #f8fafc; }
.row.selected { background: var(--sel); }
.row:focus { outline: 2px solid #a5b4fc; outline-offset: -2px; }
.row .label { padding-left: 8px; font-weight: 600; font-variant-numeric: tabular-nums; }
.row.run-level .label { color: var(--muted); font-weight: 500; }
.track { position: relative; height: 26px; }
.gridline { position: absolute; top: 0; bottom: 0; width: 1px; background: #f1f5f9; }
.bar { position: absolute; top: 5px; height: 16px; min-width: 3px; border-radius: 3px; background: var(--muted); }
.bar:hover { filter: brightness(1.1); box-shadow: 0 0 0 2px rgba(15,23,42,.25); z-index: 1; }
.bar.selected { box-shadow: 0 0 0 2px var(--ink); z-index: 1; }
.bar.point { min-width: 4px; }
.bar.tool-bar { top: 12px; height: 10px; border: 1px solid #fff; z-index: 1; }
.bar.error { background: repeating-linear-gradient(45deg, var(--error), var(--error) 4px, #f87171 4px, #f87171 8px); }
.meta { padding: 0 8px; font-size: 12px; color: var(--muted); text-align: right; white-space: nowrap;
  font-variant-numeric: tabular-nums; }
.meta .flag { margin-left: 6px; font-weight: 600; }
.meta .flag.error { color: #b91c1c; }
.meta .flag.submitted { color: #047857; }
#details h2 { margin: 0 0 4px; font-size: 16px; }
#details h3 { margin: 16px 0 6px; font-size: 13px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
#details .hint { color: var(--muted); }
#details pre { margin: 0; padding: 10px 12px; border-radius: 8px; background: var(--code-bg); color: var(--code-ink);
  white-space: pre-wrap; word-break: break-word; max-height: 420px; overflow: auto; font-size: 13px; }
#details pre.output { background: #f8fafc; color: var(--ink); border: 1px solid var(--line); }
#details pre.output.error { background: #fef2f2; border-color: #fecaca; color: #991b1b; }
#details pre.reasoning { background: #f8fafc; color: var(--ink); border: 1px solid var(--line);
  font-family: inherit; }
#details .focus { outline: 2px solid #818cf8; outline-offset: 2px; }
.phases { display: grid; grid-template-columns: auto auto 1fr; gap: 2px 14px; font-size: 13px; }
.phases .dur { text-align: right; font-variant-numeric: tabular-nums; }
.phases .stage i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.tool { margin: 4px 0; }
.tool code { background: #fef3c7; padding: 1px 5px; border-radius: 4px; }
.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 12px; }
.kv .name { color: var(--muted); }
.note { color: #92400e; font-size: 13px; }
"""

_SCRIPT = r"""
(() => {
"use strict";
const DATA = JSON.parse(document.getElementById("trace-data").textContent);
const ORDER = ["run_start", "pre_iteration", "pre_execution", "tool_call", "post_execution", "post_iteration",
  "extract", "run_end"];
// A stage's bar runs from its event to the next event of the call (tool calls aside), as StageTimings measures it:
// what happens after the stage fired. A tool call's event comes when the call returned; its bar starts at the
// event before it, so it is at most that long.
const SHORT = {
  run_start: "set-up", pre_iteration: "LM writes code", pre_execution: "code runs", tool_call: "tool call",
  post_execution: "history fold", post_iteration: "next step", extract: "extract, shutdown", run_end: "end",
};
const PHASE = {
  run_start: "interpreter set-up before the first iteration",
  pre_iteration: "the LM writes the code",
  pre_execution: "the code runs (tool calls included)",
  tool_call: "the code ran until this tool call returned",
  post_execution: "DSPy folds the result into the REPL history",
  post_iteration: "on to the next step",
  extract: "the rest of the call (interpreter shutdown)",
  run_end: "the call returned",
};

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined && kid !== false)
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return node;
}

function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "\u2013";
  if (s < 0.001) return Math.round(s * 1e6) + " µs";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
  if (s < 60) return s.toFixed(2) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
const int = (n) => (n === null || n === undefined) ? "\u2013" : Number(n).toLocaleString("en-US");
const short = (id) => id.slice(0, 8);

function summarize(run) {
  const events = run.events;
  const first = events[0], last = events[events.length - 1];
  const t0 = first.t_mono - (first.stage === "run_start" ? 0 : (first.dt_prev_s || 0));
  const loop = events.filter((e) => e.stage !== "tool_call");
  loop.forEach((e, i) => {
    e.begin = e.t_mono - t0;
    e.end = (e.stage !== "run_end" && i + 1 < loop.length ? loop[i + 1].t_mono : e.t_mono) - t0;
  });
  for (const e of events) if (e.stage === "tool_call") {
    e.end = e.t_mono - t0;
    e.begin = Math.max(0, e.end - (e.dt_prev_s || 0));
  }
  const start = events.find((e) => e.stage === "run_start") || null;
  const end = events.find((e) => e.stage === "run_end") || null;
  const extract = events.find((e) => e.stage === "extract") || null;
  const iterations = new Map();
  for (const e of events) {
    if (e.iteration === null || e.iteration === undefined) continue;
    if (!iterations.has(e.iteration)) iterations.set(e.iteration, { index: e.iteration, events: [] });
    iterations.get(e.iteration).events.push(e);
  }
  let previousTokens = 0;
  const its = [...iterations.values()].sort((a, b) => a.index - b.index);
  for (const it of its) {
    const byStage = (s) => it.events.filter((e) => e.stage === s);
    it.begin = Math.min(...it.events.map((e) => e.begin));
    it.end = Math.max(...it.events.map((e) => e.end));
    it.pre = byStage("pre_execution")[0] || null;
    it.post = byStage("post_execution")[0] || null;
    it.after = byStage("post_iteration")[0] || null;
    it.tools = byStage("tool_call");
    it.error = !!(it.post && it.post.is_error);
    if (it.error && it.pre) it.pre.failed = true;  // the "code runs" bar is the one that failed
    it.submitted = !!(it.after && it.after.submitted);
    const lastUsage = [...it.events].reverse().find((e) => e.usage);
    it.tokens = lastUsage ? lastUsage.usage.total_tokens - previousTokens : null;
    if (lastUsage) previousTokens = lastUsage.usage.total_tokens;
  }
  const span = Math.max(last.t_mono - t0, 1e-9);
  let outcome = "incomplete";
  if (end) outcome = end.error ? "error" : end.forced_extract ? "extract" : "ok";
  const usage = [...events].reverse().find((e) => e.usage);
  return { id: run.run_id, events, t0, span, start, end, extract, iterations: its, outcome,
    usage: usage ? usage.usage : null, duration: end ? end.duration_s : last.t_mono - t0 };
}

const OUTCOME_TEXT = { ok: "ok", error: "failed", extract: "extract fallback", incomplete: "incomplete" };

function renderHeader(r) {
  const box = document.getElementById("run-header");
  const module = r.start ? r.start.module : "RLM";
  const maxIters = r.start && r.start.max_iters ? " / " + r.start.max_iters : "";
  const stats = [
    ["duration", dur(r.duration)],
    ["iterations", (r.end ? r.end.iterations : r.iterations.length) + maxIters],
    ["LM calls", r.usage ? int(r.usage.lm_calls) : "\u2013"],
    ["tokens", r.usage ? int(r.usage.total_tokens) : "\u2013"],
    ["cost", r.usage && r.usage.cost_usd ? "$" + r.usage.cost_usd.toFixed(4) : "\u2013"],
    ["started", r.events[0].t_wall ? r.events[0].t_wall.replace("T", " ").slice(0, 19) + " UTC" : "\u2013"],
  ];
  const answer = [];
  if (r.end && r.end.error) answer.push(el("div", { class: "answer error" }, el("strong", { text: "error " }),
    el("span", { class: "mono", text: r.end.error })));
  else if (r.end && r.end.prediction) answer.push(el("div", { class: "answer" },
    Object.entries(r.end.prediction).map(([k, v]) => el("div", { class: "field" },
      el("span", { class: "name", text: k }), el("span", { class: "mono", text: v })))));
  box.replaceChildren(
    el("div", { class: "run-title" },
      el("span", { class: "badge outcome " + r.outcome, text: OUTCOME_TEXT[r.outcome] }),
      el("span", { class: "module mono", text: module }),
      el("code", { class: "run-id", title: r.id, text: "run " + r.id })),
    el("dl", { class: "stats" }, stats.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v })))),
    ...answer);
}

function renderLegend() {
  document.getElementById("legend").replaceChildren(...ORDER.map((s) =>
    el("span", { title: PHASE[s] }, el("i", { style: "background: var(--" + s + ")" }), s + " ",
      el("span", { class: "phase", text: SHORT[s] }))));
}

function niceStep(span) {
  const raw = span / 8, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

let current = null;

function selectRow(key, stage, focusBar) {
  for (const row of document.querySelectorAll("#timeline .row"))
    row.classList.toggle("selected", row.dataset.key === key);
  for (const bar of document.querySelectorAll("#timeline .bar")) bar.classList.remove("selected");
  if (focusBar) focusBar.classList.add("selected");
  renderDetails(key, stage);
}

function barFor(r, e, rowKey) {
  const left = (e.begin / r.span) * 100, width = ((e.end - e.begin) / r.span) * 100;
  const classes = ["bar"];
  if (e.failed) classes.push("error");
  if (e.stage === "tool_call") classes.push("tool-bar");
  if (!(e.end > e.begin)) classes.push("point");
  let tip = e.stage + " · " + dur(e.end - e.begin) + " — " + PHASE[e.stage];
  if (e.stage === "tool_call" && e.tool) tip += "\n" + e.tool.name + "(" + e.tool.args + ")";
  const bar = el("div", { class: classes.join(" "), "data-stage": e.stage, title: tip,
    style: "left:" + left.toFixed(3) + "%;width:" + width.toFixed(3) + "%;background-color:var(--" + e.stage + ")" });
  bar.addEventListener("click", (ev) => { ev.stopPropagation(); selectRow(rowKey, e.stage, bar); });
  return bar;
}

function renderTimeline(r) {
  const box = document.getElementById("timeline");
  const step = niceStep(r.span), ticks = [], lines = [];
  for (let t = 0; t <= r.span * 1.0001; t += step) {
    const left = (t / r.span) * 100;
    ticks.push(el("span", { class: "tick", style: "left:" + left + "%", text: t === 0 ? "0" : dur(t) }));
    lines.push(left);
  }
  const track = (events, key) => el("div", { class: "track" },
    lines.map((l) => el("div", { class: "gridline", style: "left:" + l + "%" })),
    events.map((e) => barFor(r, e, key)));
  const row = (key, label, events, meta, extra) => el("div", Object.assign({ class: "row", "data-key": key,
      tabindex: 0, role: "button", onclick: () => selectRow(key),
      onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); selectRow(key); } } },
    extra || {}), el("div", { class: "label", text: label }), track(events, key), el("div", { class: "meta" }, meta));
  const rows = [];
  const runLevel = (stages) => r.events.filter((e) => stages.includes(e.stage) &&
    (e.iteration === null || e.iteration === undefined));
  const startRow = row("start", "start", runLevel(["run_start"]), "inputs", { "data-row": "start" });
  startRow.classList.add("run-level");
  rows.push(startRow);
  for (const it of r.iterations) {
    const flags = [];
    if (it.error) flags.push(el("span", { class: "flag error", text: "✗ error" }));
    if (it.submitted) flags.push(el("span", { class: "flag submitted", text: "✓ submit" }));
    const tokens = it.tokens !== null ? " · " + int(it.tokens) + " tok" : "";
    rows.push(row("it" + it.index, "#" + (it.index + 1), it.events, [dur(it.end - it.begin) + tokens, ...flags],
      { "data-iteration": it.index }));
  }
  const endRow = row("end", "end", runLevel(["extract", "run_end"]),
    r.end ? OUTCOME_TEXT[r.outcome] : "no run_end", { "data-row": "end" });
  endRow.classList.add("run-level");
  rows.push(endRow);
  const axis = el("div", { class: "axis" }, el("div"), el("div", { class: "ticks" }, ticks), el("div"));
  box.replaceChildren(axis, ...rows);
}

function block(title, cls, text, focus) {
  return [el("h3", { text: title }), el("pre", { class: cls + (focus ? " focus" : ""), text: text })];
}

function kv(entries) {
  return el("div", { class: "kv" }, entries.flatMap(([k, v]) =>
    [el("span", { class: "name", text: k }), el("span", { class: "mono", text: v })]));
}

function renderDetails(key, stage) {
  const r = current, box = document.getElementById("details");
  box.dataset.key = key;
  if (key === "start") {
    const s = r.start || {};
    box.replaceChildren(el("h2", { text: "Call start" }),
      el("div", { class: "muted", text: (s.module || "") + (s.t_wall ? " · " + s.t_wall : "") }),
      el("h3", { text: "Inputs" }), kv(Object.entries(s.inputs || {})));
    return;
  }
  if (key === "end") {
    const e = r.end, parts = [el("h2", { text: "Call end" })];
    if (!e) parts.push(el("p", { class: "note", text: "The trace has no run_end for this run: the process " +
      "stopped before the call returned." }));
    else {
      parts.push(el("div", { class: "muted", text: OUTCOME_TEXT[r.outcome] + " · " + e.iterations +
        " iterations · " + dur(e.duration_s) + (e.forced_extract ? " · extract fallback" : "") }));
      if (e.error) parts.push(...block("Error", "output error", e.error, true));
      if (e.prediction) parts.push(el("h3", { text: "Prediction" }), kv(Object.entries(e.prediction)));
    }
    if (r.extract && r.extract.prediction)
      parts.push(el("h3", { text: "Extract fallback" }), kv(Object.entries(r.extract.prediction)));
    box.replaceChildren(...parts);
    return;
  }
  const it = r.iterations.find((x) => "it" + x.index === key);
  const maxIters = r.start && r.start.max_iters ? " of " + r.start.max_iters : "";
  const skipped = !!(it.pre && it.pre.skipped);
  const status = it.submitted ? "submitted the answer" : skipped && it.error ? "a middleware refused the code" :
    it.error ? "the code failed" : skipped ? "a middleware supplied the result" : "ran";
  const parts = [el("h2", { text: "Iteration " + (it.index + 1) + maxIters }),
    el("div", { class: "muted", text: status + " · " + dur(it.end - it.begin) +
      (it.tokens !== null ? " · " + int(it.tokens) + " tokens" : "") })];
  parts.push(el("h3", { text: "Stages" }), el("div", { class: "phases" }, it.events.flatMap((e) => [
    el("span", { class: "stage" + (e.stage === stage ? " focus" : "") },
      el("i", { style: "background: var(--" + e.stage + ")" }), e.stage),
    el("span", { class: "dur", text: dur(e.end - e.begin) }), el("span", { class: "muted", text: PHASE[e.stage] })])));
  if (it.pre && it.pre.reasoning) parts.push(...block("Reasoning", "reasoning", it.pre.reasoning));
  const code = it.post ? it.post.code : it.pre ? it.pre.code : null;
  if (code !== null) parts.push(...block("Code", "code", code, stage === "pre_execution"));
  if (it.pre && it.post && it.pre.code !== it.post.code)
    parts.push(el("p", { class: "note", text: "A middleware changed the code; the LM wrote:" }),
      el("pre", { class: "code original" , text: it.pre.code }));
  if (it.tools.length) {
    parts.push(el("h3", { text: "Tool calls" }));
    for (const t of it.tools) parts.push(el("div", { class: "tool" + (stage === "tool_call" ? " focus" : "") },
      el("code", { text: t.tool ? t.tool.name + "(" + t.tool.args + ")" : "(unknown tool)" }), " → ",
      el("span", { class: "mono", text: t.result_preview }),
      el("span", { class: "muted", text: " · ≤ " + dur(t.end - t.begin) })));
  }
  if (it.pre && it.pre.skipped) parts.push(el("p", { class: "note", text: "A middleware skipped execution and " +
    "supplied the result." }));
  if (it.post) parts.push(...block("Output", "output" + (it.post.is_error ? " error" : ""), it.post.result_preview ||
    "(no output)", stage === "post_execution"));
  box.replaceChildren(...parts);
}

function showRun(index) {
  current = summarize(DATA.runs[index]);
  renderHeader(current);
  renderTimeline(current);
  const first = current.iterations.length ? "it" + current.iterations[0].index : "end";
  selectRow(first);
}

function init() {
  document.getElementById("source").textContent = DATA.source || "";
  if (DATA.skipped_lines) {
    const w = document.getElementById("warning");
    w.hidden = false;
    w.textContent = DATA.skipped_lines + " line(s) of the trace could not be read and were left out " +
      "(a crash mid-write cuts the last line short).";
  }
  const select = document.getElementById("run-select");
  DATA.runs.forEach((run, i) => {
    const r = summarize(run);
    select.append(el("option", { value: i, text: "#" + (i + 1) + " · " + short(r.id) + " · " +
      OUTCOME_TEXT[r.outcome] + " · " + r.iterations.length + " it · " + dur(r.duration) }));
  });
  document.getElementById("run-picker").hidden = DATA.runs.length < 2;
  select.addEventListener("change", () => showRun(Number(select.value)));
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "SELECT" || (ev.key !== "ArrowDown" && ev.key !== "ArrowUp")) return;
    const rows = [...document.querySelectorAll("#timeline .row")];
    const at = rows.findIndex((row) => row.classList.contains("selected"));
    const next = rows[Math.min(rows.length - 1, Math.max(0, at + (ev.key === "ArrowDown" ? 1 : -1)))];
    if (next) { ev.preventDefault(); next.focus(); selectRow(next.dataset.key); }
  });
  renderLegend();
  showRun(0);
}

init();
})();
"""


__all__ = ["Trace", "read_trace", "render_html", "write_html"]
