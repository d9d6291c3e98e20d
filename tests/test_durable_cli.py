"""Deciding without Python: the `durable` command line and the local decision page, driven by a real headless
Chromium (Debian's ``chromium`` and ``chromium-driver``; skipped, saying so, only when those are absent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER

# The viewer's tests drive Debian's headless Chromium; this page's tests use the same browser fixture.
from test_viewer import browser  # noqa: F401

import rlm_events
from rlm_events.__main__ import main
from rlm_events.durable import Approval, Defer, Durable, SQLiteStore, Suspended
from rlm_events.durable.web import serving
from rlm_events.testing import ScriptedLM, build_rlm

HOSTILE = "x = '</textarea><script>document.title = \"pwned\"</script>'\nprint(len(x))"
STEPS = [HOSTILE, "SUBMIT(answer=str(len(x)))"]

FACTORY = """
import rlm_events
from rlm_events.testing import InProcessInterpreter, build_rlm


def make_rlm():
    return build_rlm("text -> answer", max_iters=4, interpreter_factory=InProcessInterpreter)
"""


def suspended_run(store: SQLiteStore) -> Suspended:
    rlm = build_rlm("text -> answer", max_iters=4, interpreter_factory=REAL_INTERPRETER)
    events = rlm_events.instrument(rlm)
    Durable(store).install(events)
    Approval(lambda request: Defer("check the string")).install(events)
    with dspy.context(lm=ScriptedLM(STEPS)):
        outcome = rlm(text="t")
    assert isinstance(outcome, Suspended)
    return outcome


def test_list_show_decide_and_resume_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runs.db"
    outcome = suspended_run(SQLiteStore(db))
    assert main(["durable", "list", "--store", str(db)]) == 0
    assert f"{outcome.run_id}  suspended  0 iterations waits on code of iteration 1" in capsys.readouterr().out
    assert main(["durable", "show", outcome.run_id, "--store", str(db)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pending"]["code"] == HOSTILE and shown["steps"][0]["kind"] == "action"
    assert main(["durable", "decide", outcome.run_id, "--store", str(db), "--code", "x = 'abc'\nprint(x)"]) == 0
    capsys.readouterr()
    assert main(["durable", "decide", outcome.run_id, "--store", str(db), "--approve"]) == 1
    assert "AlreadyDecidedError: durable run" in capsys.readouterr().err
    assert main(["durable", "decide", "nope", "--store", str(db), "--approve"]) == 1
    assert "UnknownRunError: no durable run 'nope'" in capsys.readouterr().err
    # Resume with an RLM a factory builds (here without the Approval: the decision is in the store).
    (tmp_path / "factory_module.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with dspy.context(lm=ScriptedLM(STEPS)):
        code = main(["durable", "resume", outcome.run_id, "--store", str(db), "--rlm", "factory_module:make_rlm"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["answer"] == "3"
    assert SQLiteStore(db).load(outcome.run_id).status == "done"
    sys.modules.pop("factory_module", None)


def test_the_decision_page_shows_pending_steps_and_records_an_edit(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    def after_submit(css: str) -> Any:  # the form posts, the page reloads: wait for the new page's element
        return WebDriverWait(browser, 20).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))

    store = SQLiteStore(tmp_path / "runs.db")
    edited, rejected = suspended_run(store), suspended_run(store)
    with serving(store) as server:
        browser.get(server.url)
        assert browser.title == "rlm-events: pending decisions"  # the hostile code did not run
        steps = browser.find_elements(By.CSS_SELECTOR, ".step")
        assert {s.get_attribute("data-run") for s in steps} == {edited.run_id, rejected.run_id}
        step = browser.find_element(By.CSS_SELECTOR, f".step[data-run='{edited.run_id}']")
        assert step.find_element(By.CSS_SELECTOR, "pre.code").text == HOSTILE
        assert step.find_element(By.CSS_SELECTOR, ".note").text == "check the string"
        box = step.find_element(By.CSS_SELECTOR, "form.edit textarea[name='code']")
        assert box.get_attribute("value") == HOSTILE
        box.clear()
        box.send_keys("x = 'edited'\nprint(x)")
        step.find_element(By.CSS_SELECTOR, "form.edit button").click()
        assert "edit recorded" in after_submit(".message").text
        step = browser.find_element(By.CSS_SELECTOR, f".step[data-run='{rejected.run_id}']")
        step.find_element(By.CSS_SELECTOR, "form.reject input[name='reason']").send_keys("too clever")
        step.find_element(By.CSS_SELECTOR, "form.reject button").click()
        assert after_submit("#empty").text == "No step waits for a decision."
    assert store.load(edited.run_id).decision == {
        "action": "edit",
        "code": "x = 'edited'\nprint(x)",
        "args": None,
        "kwargs": None,
    }
    assert store.load(rejected.run_id).decision == {"action": "reject", "reason": "too clever"}
    # The decided runs resume with what the page recorded.
    rlm = build_rlm("text -> answer", max_iters=4, interpreter_factory=REAL_INTERPRETER)
    durable = Durable(store).install(rlm_events.instrument(rlm))
    with dspy.context(lm=ScriptedLM(["print(x)", "SUBMIT(answer=x)"])):
        assert durable.resume(edited.run_id).answer == "edited"
        rejected_run = durable.resume(rejected.run_id)
    assert rejected_run.trajectory[0]["output"] == "[Rejected] too clever"


def test_a_foreign_form_is_refused(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    store = SQLiteStore(tmp_path / "runs.db")
    outcome = suspended_run(store)
    with serving(store) as server:
        data = f"run_id={outcome.run_id}&action=approve&token=forged".encode()
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(urllib.request.Request(server.url + "decide", data=data), timeout=10)
    assert store.load(outcome.run_id).decision is None
