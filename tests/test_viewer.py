"""The HTML trace viewer: the page it writes, and that page rendered by a real headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``); they are skipped, saying so, only when those are absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.__main__ import main
from rlm_events.trace import JsonlTrace, read_trace, render_html, write_html

# Its output holds a real U+2028 (a line break to JavaScript); the code itself keeps the escape, as an LM would.
HOSTILE = "print('</script><script>document.title = \"pwned\"</script><!-- & \\u2028')"
STEPS = [
    ("Look.", "print(len(text))"),
    ("Ask.", "note = llm_query('say hi')\nprint(note)"),
    ("Break.", "1 / 0"),
    ("Be hostile.", HOSTILE),
    ("Done.", "SUBMIT(answer=note)"),
]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def trace_file(make_rlm, tmp_path) -> Path:
    """A trace of two real runs of one RLM: one that succeeds and one that fails."""
    rlm, lm = make_rlm(STEPS, sub="hi", max_iters=6)
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    with JsonlTrace(path) as trace:
        trace.install(events)
        with dspy.context(lm=lm):
            rlm(text="abcdef")

        @events.middleware(Stage.PRE_ITERATION)
        def fail_third(ctx, next):
            if ctx.iteration == 2:
                raise RuntimeError("out of budget")
            return next(ctx)

        with dspy.context(lm=lm), pytest.raises(RuntimeError):
            rlm(text="xyz")
    return path


def test_read_trace_groups_runs_and_skips_broken_lines(trace_file):
    with trace_file.open("a") as f:
        f.write('\n{"not": "an event"}\n{"run_id": "cut short by a cra')
    trace = read_trace(trace_file)
    assert len(trace.runs) == 2
    assert trace.skipped_lines == 2
    assert trace.events == len(lines_of_valid(trace_file))


def lines_of_valid(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "stage" in record:
            out.append(record)
    return out


def test_the_page_is_self_contained_and_script_safe(trace_file):
    page = render_html(read_trace(trace_file), title="t <b>", source="trace.jsonl")
    assert page.count("</script>") == 2  # the data element and the script: the traced code closes neither
    assert "<!--" not in page and "\u2028" not in page
    assert "<title>t &lt;b&gt;</title>" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing is fetched
    data = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S)
    assert data is not None
    embedded = json.loads(data.group(1))
    assert [len(run["events"]) for run in embedded["runs"]] == [len(v) for v in read_trace(trace_file).runs.values()]
    assert any(e.get("code") == HOSTILE for e in embedded["runs"][0]["events"])


def test_view_command_writes_html(trace_file, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["view", str(trace_file), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["view", str(trace_file)]) == 0  # default: next to the trace
    assert trace_file.with_suffix(".html").is_file()
    assert write_html(trace_file) == trace_file.with_suffix(".html")


def test_view_command_explains_bad_input(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such trace file" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    assert main(["view", str(empty)]) == 1
    assert "holds no rlm-events events" in capsys.readouterr().err


# -- the assets ---------------------------------------------------------------------------------------------

ASSETS = files("rlm_events.trace") / "assets"


def test_the_assets_are_package_files_the_page_is_built_from():
    page = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    for placeholder in ("__TITLE__", "__STYLE__", "__SCRIPT__", "__DATA__"):
        assert page.count(placeholder) == 1, placeholder
    for name in ("viewer.html", "viewer.css", "viewer.js"):
        text = (ASSETS / name).read_text(encoding="utf-8")
        assert "<!--" not in text  # would open an HTML comment in the inline <style>/<script>
        assert name == "viewer.html" or "</" not in text  # would end the inline element


def test_the_script_is_valid_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node to check viewer.js (node --check)")
    with as_file(ASSETS / "viewer.js") as script:
        checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


# -- in a real browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rlm-events-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load(browser: Any, trace_file: Path) -> None:
    browser.get(write_html(trace_file).resolve().as_uri())


def open_page(browser: Any, trace_file: Path) -> list[list[dict[str, Any]]]:
    """Load the page of ``trace_file``; return its runs' events, read by the test itself."""
    load(browser, trace_file)
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in lines_of(trace_file):
        runs.setdefault(line["run_id"], []).append(line)
    return list(runs.values())


def find(browser: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, css)


def test_timeline_has_a_row_per_iteration_and_a_bar_per_stage_event(browser, trace_file):
    first, _ = open_page(browser, trace_file)
    assert browser.title == f"rlm-events trace: {trace_file.name}"  # the hostile code did not run
    iterations = sorted({e["iteration"] for e in first if e["iteration"] is not None})
    rows = find(browser, "#timeline .row[data-iteration]")
    assert [int(r.get_attribute("data-iteration")) for r in rows] == iterations == [0, 1, 2, 3, 4]
    assert [r.find_element("css selector", ".label").text for r in rows] == ["#1", "#2", "#3", "#4", "#5"]
    bars = Counter(b.get_attribute("data-stage") for b in find(browser, "#timeline .bar"))
    assert bars == Counter(e["stage"] for e in first)
    for row, index in zip(rows, iterations, strict=True):  # each iteration's bars sit in its own row
        in_row = [b.get_attribute("data-stage") for b in row.find_elements("css selector", ".bar")]
        assert in_row == [e["stage"] for e in first if e["iteration"] == index]
    # positioned by time: each iteration's first bar starts right of the previous iteration's first bar
    lefts = [float(r.find_element("css selector", ".bar").value_of_css_property("left")[:-2]) for r in rows]
    assert lefts == sorted(lefts) and lefts[0] < lefts[-1]
    assert len(find(browser, "#timeline .bar.error")) == 1  # the ZeroDivisionError iteration

    header = find(browser, "#run-header")[0].text
    assert "OK" in header and first[0]["run_id"] in header and "5 / 6" in header
    assert "answer" in header and "hi" in header


def test_clicking_shows_code_and_output(browser, trace_file):
    first, _ = open_page(browser, trace_file)
    post = [e for e in first if e["stage"] == "post_execution"]

    bar = find(browser, '#timeline .row[data-iteration="1"] .bar[data-stage="post_execution"]')[0]
    # A DOM click: bars of sub-millisecond stages are a few pixels wide and may sit under their neighbours.
    browser.execute_script("arguments[0].click()", bar)
    assert "selected" in bar.get_attribute("class")
    assert find(browser, "#details pre.code")[0].text == "note = llm_query('say hi')\nprint(note)"
    assert find(browser, "#details pre.output")[0].text == post[1]["result_preview"] == "hi"
    assert "llm_query('say hi')" in find(browser, "#details .tool")[0].text
    assert find(browser, "#details h2")[0].text == "Iteration 2 of 6"

    find(browser, '#timeline .row[data-iteration="2"] .label')[0].click()  # a row label works as well
    output = find(browser, "#details pre.output")[0]
    assert "ZeroDivisionError" in output.text and "error" in output.get_attribute("class")

    find(browser, '#timeline .row[data-iteration="3"]')[0].click()
    assert find(browser, "#details pre.code")[0].text == HOSTILE  # shown as text, never parsed as markup
    assert browser.title == f"rlm-events trace: {trace_file.name}"

    find(browser, '#timeline .row[data-row="start"]')[0].click()
    assert "abcdef" in find(browser, "#details")[0].text


def test_several_runs_get_a_selector(browser, trace_file):
    from selenium.webdriver.support.ui import Select

    _, second = open_page(browser, trace_file)
    select = Select(find(browser, "#run-select")[0])
    assert find(browser, "#run-picker")[0].is_displayed()
    assert len(select.options) == 2
    select.select_by_index(1)
    header = find(browser, "#run-header")[0].text
    assert second[0]["run_id"] in header
    assert "FAILED" in header and "RuntimeError: out of budget" in header
    assert len(find(browser, "#timeline .row[data-iteration]")) == 2  # the third failed before it began
    find(browser, '#timeline .row[data-row="end"]')[0].click()
    assert "RuntimeError: out of budget" in find(browser, "#details pre.output.error")[0].text


def test_extract_fallback_and_a_run_cut_short(browser, make_rlm, tmp_path):
    rlm, lm = make_rlm(["print('thinking')"], max_iters=2, extract={"answer": "from extract"})
    events = rlm_events.instrument(rlm)
    path = tmp_path / "extract.jsonl"
    with JsonlTrace(path) as trace:
        trace.install(events)
        with dspy.context(lm=lm):
            rlm(text="abc")
    load(browser, path)
    assert "EXTRACT FALLBACK" in find(browser, "#run-header")[0].text
    end_bars = find(browser, '#timeline .row[data-row="end"] .bar')
    assert [b.get_attribute("data-stage") for b in end_bars] == ["extract", "run_end"]
    find(browser, '#timeline .row[data-row="end"]')[0].click()
    assert "from extract" in find(browser, "#details")[0].text

    crashed = tmp_path / "crashed.jsonl"  # the process died before run_end, mid-write of a line
    crashed.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]) + '{"run_id": "ab')
    load(browser, crashed)
    assert "INCOMPLETE" in find(browser, "#run-header")[0].text
    assert "1 line(s) of the trace could not be read" in find(browser, "#warning")[0].text
    find(browser, '#timeline .row[data-row="end"]')[0].click()
    assert "no run_end" in find(browser, "#details")[0].text


def test_the_run_card_says_why_the_run_ended_and_flags_the_stopping_iteration(browser, make_rlm, tmp_path):
    from rlm_events.builtins import Budget

    rlm, lm = make_rlm(["print(1)"], max_iters=6, extract={"answer": "stopped"})
    events = rlm_events.instrument(rlm)
    Budget(max_iterations=2).install(events)
    path = tmp_path / "budget.jsonl"
    with JsonlTrace(path) as trace:
        trace.install(events)
        with dspy.context(lm=lm):
            rlm(text="abc")
    load(browser, path)
    header = find(browser, "#run-header")[0].text
    assert "BUDGET STOP" in header.upper() and "2 / 6" in header
    flags = [f.text for f in find(browser, "#timeline .flag")]
    assert flags == ["■ budget stop"]
    find(browser, '#timeline .row[data-row="end"]')[0].click()
    assert (
        "2 iterations" in find(browser, "#details")[0].text
        and "ended by budget stop" in find(browser, "#details")[0].text
    )


def test_a_run_that_failed_before_its_first_iteration_counts_none_everywhere(browser, make_rlm, tmp_path):
    rlm, lm = make_rlm(["print(1)"], max_iters=6)
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_ITERATION)
    def refuse(ctx, next):
        raise RuntimeError("not today")

    path = tmp_path / "failed.jsonl"
    with JsonlTrace(path) as trace:
        trace.install(events)
        with dspy.context(lm=lm), pytest.raises(RuntimeError):
            rlm(text="abc")
    load(browser, path)
    assert "0 / 6" in find(browser, "#run-header")[0].text
    find(browser, '#timeline .row[data-row="end"]')[0].click()
    assert "0 iterations" in find(browser, "#details")[0].text


def stats_of(browser: Any) -> dict[str, str]:
    """The run card's figures: ``{label: value}``."""
    return {
        item.find_element("css selector", "dt").text: item.find_element("css selector", "dd").text
        for item in find(browser, "#run-header dl.stats > div")
    }


def test_the_run_card_shows_an_unknown_cost_as_a_dash_and_what_the_cache_saved(browser, tmp_path):
    """Through the real LiteLLM client: an unpriced model's cost is a dash (never $0); a cached run shows its saving."""
    from conftest import REAL_INTERPRETER
    from dspy.clients.cache import Cache

    from rlm_events.testing import LocalOpenAIServer, build_rlm

    steps = ["x = 6 * 7\nprint(x)", "SUBMIT(answer=str(x))"]
    rlm = build_rlm("text -> answer", max_iters=4, interpreter_factory=REAL_INTERPRETER)
    events = rlm_events.instrument(rlm)
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("unpriced", "paid", "cached")}
    previous = dspy.cache
    dspy.cache = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
    try:
        with LocalOpenAIServer.scripted(steps, prices={"gpt-4o-mini": (0.15, 0.6)}) as server:
            for name, model in (("unpriced", "any-model"), ("paid", "gpt-4o-mini"), ("cached", "gpt-4o-mini")):
                lm = dspy.LM(f"openai/{model}", api_base=server.base_url, api_key="x", cache=name != "unpriced")
                with JsonlTrace(paths[name]) as trace:
                    trace.install(events)
                    with dspy.context(lm=lm):
                        rlm(text="abc")
                    trace.uninstall(events)
            bill = server.bill
    finally:
        dspy.cache = previous
    paid_cost = sum(r.cost_usd or 0.0 for r in bill if r.model == "gpt-4o-mini")
    assert bill.calls == 4 and paid_cost > 0  # the cached run made no request

    load(browser, paths["unpriced"])
    stats = stats_of(browser)
    assert stats["cost"] == "\u2013" and stats["cost unknown"] == "2 unpriced call(s)" and "cached" not in stats
    load(browser, paths["paid"])
    assert stats_of(browser)["cost"] == f"${paid_cost:.4f}" and "cost unknown" not in stats_of(browser)
    load(browser, paths["cached"])
    stats = stats_of(browser)
    assert stats["cost"] == "$0.0000" and stats["tokens"] == "0" and stats["LM calls"] == "2"
    assert stats["cached"] == f"2 calls, saved ${paid_cost:.4f}"
