// The rlm-events trace viewer. rlm_events/trace/viewer.py inlines this script into viewer.html, after the
// #trace-data element holding the trace as JSON (the records of rlm_events/trace/schema.py, grouped by run).
// All trace text is set as textContent, never parsed as markup. Check: node --check rlm_events/trace/assets/viewer.js
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
  // One iteration count everywhere: the call's own (iterations started) when it ended, else what the trace shows.
  const count = end ? end.iterations : its.length;
  const stopReason = end ? end.stop_reason || (end.error ? "error" : end.forced_extract ? "max_iters" : "submit") : null;
  const usage = [...events].reverse().find((e) => e.usage);
  return { id: run.run_id, events, t0, span, start, end, extract, iterations: its, outcome, count, stopReason,
    usage: usage ? usage.usage : null, duration: end ? end.duration_s : last.t_mono - t0 };
}

const OUTCOME_TEXT = { ok: "ok", error: "failed", extract: "extract fallback", incomplete: "incomplete" };
const STOP_TEXT = { submit: "SUBMIT", max_iters: "iteration limit", budget: "budget stop", middleware: "middleware stop",
  error: "error", suspended: "suspended: waits for a decision" };
// A durable run's link to the run it resumes or forks (run_start's "durable" field).
function durableText(link) {
  if (!link) return null;
  if (link.relation === "fork") return "fork of run " + link.parent + " at iteration " + link.replayed;
  if (link.relation === "resume") return "resumes run " + link.parent + " after " + iterationsText(link.replayed);
  return "durable run " + link.run_id;
}
const iterationsText = (n) => n + (n === 1 ? " iteration" : " iterations");

// Dollars: a cost the trace does not know (null: an unpriced or unmetered call) is "\u2013", never $0.
const money = (usd) => (typeof usd === "number" ? "$" + usd.toFixed(4) : "\u2013");
// Why the cost is unknown: the calls without a price, or without usage the meter could see.
function unknownCost(usage) {
  const parts = [];
  if (usage && usage.unpriced_lm_calls) parts.push(int(usage.unpriced_lm_calls) + " unpriced");
  if (usage && usage.unmetered_lm_calls) parts.push(int(usage.unmetered_lm_calls) + " unmetered");
  return parts.length ? [["cost unknown", parts.join(", ") + " call(s)"]] : [];
}

function renderHeader(r) {
  const box = document.getElementById("run-header");
  const module = r.start ? r.start.module : "RLM";
  const maxIters = r.start && r.start.max_iters ? " / " + r.start.max_iters : "";
  const stats = [
    ["duration", dur(r.duration)],
    ["iterations", r.count + maxIters],
    ["ended by", r.stopReason ? STOP_TEXT[r.stopReason] || r.stopReason : "\u2013"],
    ["LM calls", r.usage ? int(r.usage.lm_calls) : "\u2013"],
    ["tokens", r.usage ? int(r.usage.total_tokens) : "\u2013"],
    ["cost", money(r.usage ? r.usage.cost_usd : null)],
    ...unknownCost(r.usage),
    ...(r.usage && r.usage.cached_lm_calls ? [["cached", int(r.usage.cached_lm_calls) + " calls, saved " +
      money(r.usage.saved_cost_usd)]] : []),
    ...(r.start && r.start.durable ? [["durable", durableText(r.start.durable)]] : []),
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
    if (it.after && it.after.stop) flags.push(el("span", { class: "flag stop",
      text: "■ " + (STOP_TEXT[it.after.stop_reason] || "stop") }));
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
      parts.push(el("div", { class: "muted", text: OUTCOME_TEXT[r.outcome] + " · " + iterationsText(r.count) +
        " · " + dur(e.duration_s) + " · ended by " + (STOP_TEXT[r.stopReason] || r.stopReason) }));
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
      OUTCOME_TEXT[r.outcome] + " · " + r.count + " it · " + dur(r.duration) }));
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
