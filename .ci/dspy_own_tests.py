"""DSPy's own RLM tests, run bare and with every `dspy.RLM` instrumented: any test whose outcome differs fails.

rlm-events promises that instrumentation is invisible: an RLM that works bare works the same instrumented. This
runs the tests DSPy itself ships for its RLM (every test module of DSPy's `tests/` that builds one) twice with the
interpreter running this script: bare, then with `instrument_every_rlm` (beside this script) as a pytest plugin,
which instruments every RLM built with a pass-through middleware, a blinker receiver, an inline tap and a queued
tap on every stage. It compares the two runs' per-test outcomes (pytest's JUnit XML) and fails when they differ,
when no RLM was instrumented or when a hook never fired (a check that cannot fail is worthless). DSPy's own skips
and failures are fine as long as both runs have them.

Where DSPy's tests come from, for the DSPy installed here (nothing is written into the checkout):

1. `--source DIR` or `DSPY_OWN_TESTS_SOURCE=DIR`: a DSPy source tree (a clone at the installed release's tag);
   its `tests/` is copied to a temporary directory first.
2. Otherwise the sdist of the installed release, downloaded from the package registry into a temporary
   directory. DSPy's sdists (3.1.2 to 3.4.1 at least) ship no `tests/predict/test_rlm.py`: then this prints why
   and exits with status 3 ("not available"). That is why `.ci/run`, which reaches only the registries, does not run
   this: run it where a DSPy clone is at hand (docs/guide/development.md).

DSPy's tests need two pytest plugins of its `dev` extra, pytest-asyncio and pytest-mock: they are installed into
a temporary directory put on `PYTHONPATH` for both runs (the environment itself is not changed). DSPy's
PythonInterpreter (Deno + Pyodide) imports Deno's standard library from the web, out of reach where only the package
registries are: DSPy skips its tests marked `deno` by default (`-- --deno` runs them where that is reachable);
its unmarked ones that need Deno run when `deno` is on PATH and then fail alike in both runs.

Usage: python .ci/dspy_own_tests.py [--source DIR] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from importlib.metadata import requires, version
from pathlib import Path

NOT_AVAILABLE = 3
PLUGIN = "instrument_every_rlm"
FIRINGS_VARIABLE = "RLM_EVENTS_FIRINGS_FILE"  # the plugin's FIRINGS_FILE_VARIABLE (not imported: it imports dspy)
HERE = Path(__file__).resolve().parent
# A test module that builds a dspy.RLM (or a subclass: PredictRLM, a test's own) is one of DSPy's RLM tests.
BUILDS_AN_RLM = re.compile(r"\bRLM\(|PredictRLM")


class NotAvailable(Exception):
    """DSPy's tests for the installed release cannot be had here."""


def pip(command: str) -> list[str]:
    """`pip COMMAND` for this interpreter: its own pip, or uv's (a uv-made environment has no pip; uv has no
    `download`)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", command]
    if (uv := shutil.which("uv")) and command != "download":
        return [uv, "pip", command, "--python", sys.executable]
    raise NotAvailable(f"{sys.executable} has no pip (and uv cannot pip {command}): pass --source DIR")


def tests_from_source(source: Path, into: Path) -> Path:
    if not (source / "tests").is_dir():  # asked for and missing: an error, not "not available"
        raise SystemExit(f"{source} has no tests/ directory: give the root of a DSPy source tree")
    shutil.copytree(source / "tests", into / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    if (source / "pyproject.toml").is_file():  # DSPy's pytest settings (its warning filters)
        shutil.copy2(source / "pyproject.toml", into / "pyproject.toml")
    return into


def tests_from_sdist(release: str, into: Path) -> Path:
    download = into / "sdist"
    command = [*pip("download"), "-q", "--no-deps", "--no-binary", ":all:", "-d", str(download)]
    result = subprocess.run([*command, f"dspy=={release}"], capture_output=True, text=True)
    archives = sorted(download.glob("dspy-*.tar.gz")) if download.is_dir() else []
    if result.returncode != 0 or not archives:
        raise NotAvailable(f"pip could not download DSPy {release}'s sdist:\n{result.stderr.strip()[-2000:]}")
    with tarfile.open(archives[0]) as archive:
        members = archive.getmembers()
        top = members[0].name.split("/")[0]
        if f"{top}/tests/predict/test_rlm.py" not in {m.name for m in members}:
            raise NotAvailable(
                f"DSPy {release}'s sdist ({archives[0].name}) ships no tests/predict/test_rlm.py, and the package "
                f"registry is the only source here: pass --source DIR (a DSPy clone at tag {release}) to run them"
            )
        wanted = [m for m in members if m.name.startswith((f"{top}/tests/", f"{top}/pyproject.toml")) and m.isfile()]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuse links and paths out of `into`
            archive.extractall(into, members=wanted, filter="data")
        else:
            archive.extractall(into, members=wanted)  # regular files under the sdist's own folder only
    return into / top


def test_plugins(into: Path) -> Path:
    """pytest-asyncio and pytest-mock, in the versions the installed DSPy's `dev` extra asks for, installed into
    `into` (to be put on `PYTHONPATH`)."""
    wanted = {"pytest-asyncio": "pytest-asyncio", "pytest-mock": "pytest-mock"}
    for requirement in requires("dspy") or []:
        name = re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower()
        if name in wanted and 'extra == "dev"' in requirement:
            wanted[name] = requirement.split(";")[0].replace(" ", "")
    command = [*pip("install"), "-q", "--no-deps", "--target", str(into), *wanted.values()]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"could not install DSPy's test plugins: {' '.join(command)}\n{result.stderr[-2000:]}")
    return into


def rlm_test_modules(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in (root / "tests").rglob("test_*.py")
        if BUILDS_AN_RLM.search(path.read_text(encoding="utf-8", errors="replace"))
    )


def outcomes(junit_xml: Path) -> dict[str, tuple[str, str]]:
    """`{test id: (outcome, message)}` from pytest's JUnit XML."""
    result: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(junit_xml).iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome, message = kind, (element.get("message") or element.text or "").strip()
                break
        result[test_id] = (outcome, message)
    return result


def run_pytest(root: Path, modules: list[str], junit_xml: Path, extra: list[str], env: dict[str, str]) -> float:
    # A module that does not import (another release's tests) is one error; the other modules still run.
    command = [
        sys.executable,
        "-m",
        "pytest",
        *modules,
        "-q",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
    ]
    command.append(f"--junitxml={junit_xml}")
    started = time.monotonic()
    subprocess.run([*command, *extra], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if not junit_xml.is_file():
        raise SystemExit(f"pytest wrote no report: {' '.join(command)} (run it in {root} to see why)")
    return time.monotonic() - started


def summary(results: dict[str, tuple[str, str]]) -> str:
    counts: dict[str, int] = {}
    for outcome, _ in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=os.environ.get("DSPY_OWN_TESTS_SOURCE") or None)
    parser.add_argument("pytest_args", nargs="*", help="passed to both pytest runs (after --)")
    args = parser.parse_args()
    release = version("dspy")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dspy-own-tests-") as temporary:
        work = Path(temporary)
        try:
            root = tests_from_source(args.source, work) if args.source else tests_from_sdist(release, work)
        except NotAvailable as reason:
            print(f"DSPy {release}'s own RLM tests: not available, not run. {reason}")
            return NOT_AVAILABLE
        modules = rlm_test_modules(root)
        if not modules:
            print(f"no test module of DSPy {release}'s tests/ builds a dspy.RLM")
            return 1
        source = args.source or f"DSPy {release}'s sdist"
        print(f"DSPy {release}: {len(modules)} test modules from {source}: {' '.join(modules)}")
        plugins = test_plugins(work / "plugins")
        path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path}
        env.pop(FIRINGS_VARIABLE, None)
        bare_seconds = run_pytest(root, modules, work / "bare.xml", args.pytest_args, env)
        firings_file = work / "firings.json"
        instrumented_env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
            FIRINGS_VARIABLE: str(firings_file),
        }
        instrumented_seconds = run_pytest(
            root, modules, work / "instrumented.xml", ["-p", PLUGIN, *args.pytest_args], instrumented_env
        )
        bare, instrumented = outcomes(work / "bare.xml"), outcomes(work / "instrumented.xml")
        firings = json.loads(firings_file.read_text()) if firings_file.is_file() else {}

    print(f"bare:         {summary(bare)} ({bare_seconds:.1f} s)")
    print(f"instrumented: {summary(instrumented)} ({instrumented_seconds:.1f} s)")
    problems = []
    for test_id in sorted(bare.keys() | instrumented.keys()):
        was, now = bare.get(test_id, ("absent", "")), instrumented.get(test_id, ("absent", ""))
        if was[0] != now[0]:
            problems.append(f"{test_id}: bare {was[0]}, instrumented {now[0]}: {now[1][:500] or was[1][:500]}")
    totals = {
        hook: sum(firings.get(hook, {}).values()) for hook in ("middleware", "receiver", "inline_tap", "queued_tap")
    }
    print(
        f"rlm_events: {firings.get('instrumented', 0)} RLMs instrumented; stage firings: "
        + ", ".join(f"{n} {hook}" for hook, n in totals.items())
    )
    for hook in totals:
        if firings:
            print(f"  {hook:<10} " + ", ".join(f"{stage} {n}" for stage, n in sorted(firings[hook].items())))
    if not firings.get("instrumented"):
        problems.append("no dspy.RLM was instrumented: the plugin did not run")
    problems += [f"no stage reached the {hook}: the run checked nothing" for hook, n in totals.items() if not n]
    if not bare:
        problems.append("no test ran")
    print(f"wall time {time.monotonic() - started:.1f} s")
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"passed: every one of {len(bare)} tests has the same outcome bare and instrumented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
