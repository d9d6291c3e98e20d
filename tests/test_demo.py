"""``python -m rlm_events demo``: a real dspy.RLM run end to end, with the guard, budget, progress and trace on; on
the scripted LM and through DSPy's real LiteLLM client against a local OpenAI-compatible server that bills."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import import_litellm

from rlm_events.__main__ import main
from rlm_events.demo import STEPS, SUB_ANSWER, bundled_text, expected_counts
from rlm_events.local_openai import Bill, LocalOpenAIServer

README = Path(__file__).resolve().parent.parent / "README.md"
# The DSPy release the README's transcripts were recorded on: there its token and cost figures must be exact (other
# releases' prompts differ in length).
README_RECORDED_ON = "3.4.1"
USAGE_LINE = re.compile(
    r"^usage: (\d+) LM calls?, ([\d,]+) tokens \(([\d,]+) prompt \+ ([\d,]+) completion\), (\$[\d.]+|cost unknown.*)$",
    re.M,
)
# The progress display's last line for the call: "finished by ... | 6 iterations | 0.38 s | 10,966 tokens, $0.0018".
FINISHED_LINE = re.compile(r"\| \d+ iterations? \| [\d.]+ s \| ([\d,]+) tokens(?:, \$([\d.]+))?(?:, [^|]*)?$", re.M)
# LiteLLM's price of gpt-4o-mini (USD per million tokens, input and output), read from LiteLLM itself below.
PRICED_MODEL = "gpt-4o-mini"

STAGE_LINE = re.compile(
    r"^\[([0-9a-f]{8})\] (run_start|pre_iteration|pre_execution|post_execution|post_iteration|"
    r"tool_call|extract|run_end)\b"
)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_runs_end_to_end(tmp_path, capsys):
    trace = tmp_path / "demo.jsonl"
    assert main(["demo", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    want = expected_counts(bundled_text())

    assert f"answer: todo={want['TODO']} fixme={want['FIXME']} (expected {want['TODO']}/{want['FIXME']})" in out
    assert f"python -m rlm_events view {trace} --open" in out
    assert "code guard" in out and "budget" in out

    lines = lines_of(trace)
    printed = [STAGE_LINE.match(line) for line in out.splitlines()]
    stages = [m.group(2) for m in printed if m]
    assert stages == [line["stage"] for line in lines]  # one printed line per stage event, as they fired
    assert {m.group(1) for m in printed if m} == {lines[0]["run_id"][:8]}

    # the guard at work: step 2 reaches for subprocess, is refused, step 3 recovers in plain Python
    assert re.search(r"pre_execution +#2 import subprocess +\[not run", out)
    post = [line for line in lines if line["stage"] == "post_execution"]
    assert post[1]["is_error"] and post[1]["result_preview"].startswith("[Error] CodeGuard refused")
    assert "subprocess" in post[1]["result_preview"]
    assert not post[2]["is_error"] and post[2]["result_preview"].startswith("82 hits")

    # progress: one line per finished iteration, then the call
    assert re.search(r"iteration 2/8 error \| [\d.]+ s \| [\d,]+ tokens, \$0\.\d{4} total so far$", out, re.M)
    assert re.search(r"iteration 6/8 submitted", out)
    assert re.search(r"finished by SUBMIT \| 6 iterations \| [\d.]+ s \| [\d,]+ tokens, \$0\.\d{4}$", out, re.M)

    end = lines[-1]
    assert end["stage"] == "run_end" and end["error"] is None and end["iterations"] == 6
    assert end["prediction"]["todo"] == str(want["TODO"]) and end["prediction"]["fixme"] == str(want["FIXME"])
    assert end["usage"]["lm_calls"] == 7 and end["usage"]["total_tokens"] > 0  # 6 actions + 1 llm_query


def test_demo_writes_a_fresh_trace_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    assert main(["demo"]) == 0
    capsys.readouterr()
    runs = {line["run_id"] for line in lines_of(tmp_path / "rlm-trace.jsonl")}
    assert len(runs) == 1  # the second demo replaced the first one's trace


def test_demo_records_an_mlflow_trace(tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package")
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["demo", "--mlflow", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri {store}" in out
    trace_id = re.search(r"MLflow trace (tr-[0-9a-f]+) in experiment 'rlm-events demo'", out).group(1)  # type: ignore[union-attr]

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        trace = mlflow.get_trace(trace_id)
    finally:
        mlflow.set_tracking_uri(previous)
    spans = trace.data.spans
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "RLM.forward" and root.attributes["rlm.stop_reason"] == "submit"
    iterations = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
    assert [s.name for s in iterations] == [f"iteration {n}" for n in range(1, 7)]
    refused = [s for s in spans if s.name == "execute_code" and s.parent_id == iterations[1].span_id]
    assert [e.name for e in refused[0].events if e.name == "guard_refusal"] == ["guard_refusal"]
    (tool,) = [s for s in spans if s.name == "llm_query"]
    assert [s.name for s in spans if s.parent_id == tool.span_id]  # autolog's sub-LM span, under the tool
    assert (tmp_path / "rlm-trace.jsonl").is_file()


def test_demo_tracking_uri_needs_mlflow(capsys):
    assert main(["demo", "--tracking-uri", "sqlite:///x.db"]) == 2
    assert "--tracking-uri is for --mlflow" in capsys.readouterr().err


def test_demo_tracking_uri_and_api_options_need_their_mode(capsys):
    assert main(["demo", "--api-base", "http://127.0.0.1:1/v1"]) == 2
    assert "--api-base is for --model" in capsys.readouterr().err
    assert main(["demo", "--api-key", "k"]) == 2
    assert "--api-key is for --model" in capsys.readouterr().err
    assert main(["demo", "--model", "openai/m", "--api-base", "127.0.0.1:8000"]) == 2
    assert "--api-base must be an http(s) URL" in capsys.readouterr().err


def test_importing_the_demo_changes_no_environment_variable():
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    # DSPy before 3.2 sets the variable itself when imported: what counts is what importing the demo adds.
    code = (
        "import os, dspy; before = dict(os.environ); import rlm_events.demo; "
        "print({k: v for k, v in os.environ.items() if before.get(k) != v})"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "{}"


# -- the README's transcripts ---------------------------------------------------------------------------------


def readme_transcripts() -> list[tuple[str, str]]:
    """The ```text blocks of the README's "Set up" and "Demo and trace viewer" sections: demo output, where a line
    ``...`` stands for lines left out."""
    found = []
    for part in re.split(r"^## ", README.read_text(encoding="utf-8"), flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        if title in ("Set up", "Demo and trace viewer"):
            found += [(title, block) for block in re.findall(r"^```text\n(.*?)^```", part, flags=re.M | re.S)]
    return found


def normalized(line: str, *, figures: bool) -> str:
    """``line`` without what changes from run to run (the run id, durations) and, unless ``figures``, tokens and
    cost."""
    line = re.sub(r"^\[[0-9a-f]{8}\]", "[RUN]", line)
    line = re.sub(r"\b\d+\.\d\d s\b", "T s", line)
    line = re.sub(r"iterations=(\d+) \d+ ms", r"iterations=\1 T ms", line)
    if not figures:
        line = re.sub(r"[\d,]+ (tokens|prompt|completion)\b", r"N \1", line)
        line = re.sub(r"\$\d+\.\d{4}", "$C", line)
    return line


def test_the_readme_shows_what_the_demo_prints(tmp_path, monkeypatch, capsys):
    transcripts = readme_transcripts()
    assert {title for title, _ in transcripts} == {"Set up", "Demo and trace viewer"}
    monkeypatch.chdir(tmp_path)  # the README runs it with the default trace path
    assert main(["demo"]) == 0
    figures = dspy.__version__ == README_RECORDED_ON
    printed = [normalized(line, figures=figures) for line in capsys.readouterr().out.splitlines()]
    for title, block in transcripts:
        segments: list[list[str]] = [[]]
        for line in block.splitlines():
            if line == "...":
                segments.append([])
            else:
                segments[-1].append(normalized(line, figures=figures))
        at = 0
        for segment in segments:
            starts = [i for i in range(at, len(printed) - len(segment) + 1) if printed[i : i + len(segment)] == segment]
            assert starts, f"README section {title!r}: these lines are not what the demo prints:\n" + "\n".join(segment)
            at = starts[0] + len(segment)
        if title == "Set up":  # the whole output, from its first line to its last
            assert printed[: len(segments[0])] == segments[0] and at == len(printed)


# -- on a real client, against a local OpenAI-compatible server ------------------------------------------------


def run_against(server: LocalOpenAIServer, model: str, trace: Path, capsys: Any) -> tuple[int, str, str, dict]:
    """Run the demo's CLI on ``openai/<model>`` at ``server``; its exit code, stdout, stderr and the run_end record."""
    code = main(["demo", "--model", f"openai/{model}", "--api-base", server.base_url, "--trace", str(trace)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, lines_of(trace)[-1]


def assert_reports(bill: Bill, out: str, end: dict[str, Any]) -> None:
    """What the demo printed and traced is what the server billed: calls, prompt, completion and total tokens."""
    assert bill.calls > 0 and bill.unmetered_calls == 0
    (usage_line,) = USAGE_LINE.findall(out)
    calls, total, prompt, completion = (int(n.replace(",", "")) for n in usage_line[:4])
    assert (calls, prompt, completion, total) == (
        bill.calls,
        bill.prompt_tokens,
        bill.completion_tokens,
        bill.total_tokens,
    )
    usage = end["usage"]
    assert (usage["lm_calls"], usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        bill.calls,
        bill.prompt_tokens,
        bill.completion_tokens,
        bill.total_tokens,
    )
    (finished,) = FINISHED_LINE.findall(out)
    assert int(finished[0].replace(",", "")) == bill.total_tokens


@pytest.fixture
def no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo must reach a local server without an API key (it sends a placeholder)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_demo_on_an_unpriced_model_matches_the_servers_bill(tmp_path, capsys, no_openai_key):
    with LocalOpenAIServer.scripted(STEPS, sub=SUB_ANSWER) as server:
        code, out, err, end = run_against(server, "local-demo", tmp_path / "demo.jsonl", capsys)
        assert code == 0, err
        bill = server.bill
        assert {request["model"] for request in server.requests} == {"local-demo"}

        want = expected_counts(bundled_text())
        assert f"answer: todo={want['TODO']} fixme={want['FIXME']} (expected" in out
        assert f"dspy.RLM on openai/local-demo at {server.base_url}" in out
        assert "100,000 tokens, no dollar cap)" in out  # LiteLLM has no price for it: no silent dollar cap
        assert bill.calls == 7 and end["error"] is None and end["iterations"] == 6
        assert_reports(bill, out, end)
        assert "cost unknown (LiteLLM has no price for openai/local-demo)" in out
        assert end["usage"]["cost_usd"] is None  # unknown, not 0

        # DSPy's cache is off: a second run makes (and is billed for) its calls again
        server.reset()
        code, out, err, end = run_against(server, "local-demo", tmp_path / "again.jsonl", capsys)
        assert code == 0, err
        assert server.bill.calls == 7
        assert_reports(server.bill, out, end)


def test_demo_on_a_priced_model_matches_the_servers_bill_and_keeps_the_dollar_cap(tmp_path, capsys, no_openai_key):
    litellm = import_litellm()  # DSPy's client: its price of the model is the one the server bills at
    info = litellm.get_model_info(f"openai/{PRICED_MODEL}")
    price = (info["input_cost_per_token"] * 1e6, info["output_cost_per_token"] * 1e6)
    with LocalOpenAIServer.scripted(STEPS, sub=SUB_ANSWER, prices={PRICED_MODEL: price}) as server:
        code, out, err, end = run_against(server, PRICED_MODEL, tmp_path / "demo.jsonl", capsys)
        assert code == 0, err
        bill = server.bill
    assert "100,000 tokens, $0.10)" in out
    assert_reports(bill, out, end)
    assert bill.cost_usd is not None and bill.cost_usd > 0
    assert end["usage"]["cost_usd"] == pytest.approx(bill.cost_usd, rel=1e-6)
    (usage_line,) = USAGE_LINE.findall(out)
    assert usage_line[4] == f"${bill.cost_usd:.4f}"
    assert FINISHED_LINE.findall(out)[0][1] == f"{bill.cost_usd:.4f}"


def test_demo_takes_the_price_of_a_model_litellm_does_not_price(tmp_path, capsys, no_openai_key):
    model, price = "local-priced-demo", (2.0, 8.0)
    with LocalOpenAIServer.scripted(STEPS, sub=SUB_ANSWER, prices={model: price}) as server:
        trace = tmp_path / "demo.jsonl"
        argv = ["demo", "--model", f"openai/{model}", "--api-base", server.base_url, "--trace", str(trace)]
        assert main([*argv, "--price", str(price[0]), str(price[1])]) == 0
        out, bill = capsys.readouterr().out, server.bill
    end = lines_of(trace)[-1]
    assert "100,000 tokens, $0.10)" in out  # the dollar cap holds: the run's cost is known
    assert_reports(bill, out, end)
    assert bill.cost_usd is not None and end["usage"]["cost_usd"] == pytest.approx(bill.cost_usd, rel=1e-6)
    assert USAGE_LINE.findall(out)[0][4] == f"${bill.cost_usd:.4f}"


def test_demo_refuses_a_negative_price(capsys):
    assert main(["demo", "--model", "openai/m", "--price", "-1", "2"]) == 2
    assert "--price takes two numbers >= 0" in capsys.readouterr().err


def test_demo_ends_cleanly_on_an_lm_that_never_submits(tmp_path, capsys, no_openai_key):
    # A real LM writes its own code: here it never SUBMITs, so the budget stops it and the extract fallback answers.
    extract = {"todo": 3, "fixme": 4, "summary": "A guess.\nOn two lines."}
    with LocalOpenAIServer.scripted(["print(len(text))"], extract=extract) as server:
        code, out, err, end = run_against(server, "local-demo", tmp_path / "demo.jsonl", capsys)
        bill = server.bill
    assert code == 0, err
    want = expected_counts(bundled_text())
    assert f"answer: todo=3 fixme=4 (expected {want['TODO']}/{want['FIXME']})" in out
    assert "summary: A guess. On two lines." in out
    assert "iteration 8/8 ok, stopped (budget)" in out and end["forced_extract"]
    assert bill.calls == 9  # 8 actions and the extract call
    assert_reports(bill, out, end)


def test_demo_fails_in_one_line_on_an_answer_dspy_cannot_parse(tmp_path, capsys, no_openai_key):
    with LocalOpenAIServer(["I would rather not write code."]) as server:
        trace = tmp_path / "demo.jsonl"
        code, out, err, end = run_against(server, "local-demo", trace, capsys)
        bill = server.bill
    assert code == 1
    assert err.splitlines() == [
        "demo failed: AdapterParseError: LM response cannot be serialized to a JSON object.",
        f"the trace {trace} records the call: python -m rlm_events view {trace} --open",
    ]
    assert end["stage"] == "run_end" and "AdapterParseError" in end["error"]
    assert_reports(bill, out, end)  # what the failed call was billed is still reported


def test_without_litellm_the_demo_reads_prices_from_dspys_own_map(monkeypatch):
    # DSPy 3.4's default engine runs without LiteLLM, and on DSPy 3.4.0 importing LiteLLM after DSPy fails (its lazy
    # imports): the demo's dollar cap then asks DSPy's own price map, which only 3.4+ has.
    from rlm_events.demo import has_price
    from rlm_events.pricing import register_prices

    register_prices({"openai/demo-registered-without-litellm": (1.0, 2.0)})
    monkeypatch.setitem(sys.modules, "litellm", None)  # `import litellm` raises ImportError
    with pytest.raises(ImportError):
        import litellm  # noqa: F401
    own_map = hasattr(dspy.clients, "model_metadata") or _imports("dspy.clients.model_metadata")
    assert has_price(f"openai/{PRICED_MODEL}") is own_map
    assert has_price("openai/demo-registered-without-litellm") is own_map
    assert has_price("openai/local-demo") is False


def _imports(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True
