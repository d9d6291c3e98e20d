"""Importing rlm-events has no side effect: no environment variable changed, nothing connected to or tracked on a
signal, no logging handler, warning filter or DSPy callback added. Each public module is imported in a fresh
interpreter (its dependencies first, so that only what the module itself does is compared)."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rlm_events

ROOT = Path(__file__).resolve().parents[1]


def _public_modules() -> list[str]:
    """``rlm_events``, ``middleware`` and every module below ``rlm_events`` with no ``_``-prefixed part."""
    found = ["rlm_events", "middleware"]
    for info in pkgutil.walk_packages(rlm_events.__path__, "rlm_events."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


# What the child compares before and after importing the module (its dependencies are imported before "before").
_PROBE = r"""
import importlib, json, logging, os, sys, warnings
import blinker, dspy, pydantic  # the dependencies' own import-time effects are theirs

# Every write to os.environ, even of a value it already had (this interpreter inherits what its parent's imports set).
written = []
_set, _del = os._Environ.__setitem__, os._Environ.__delitem__
os._Environ.__setitem__ = lambda self, key, value: (written.append(key), _set(self, key, value))[1]
os._Environ.__delitem__ = lambda self, key: (written.append(key), _del(self, key))[1]

def state():
    loggers = {"": logging.getLogger()}
    loggers.update((name, logger) for name, logger in logging.root.manager.loggerDict.items()
                   if name.split(".")[0] in ("rlm_events", "middleware") and isinstance(logger, logging.Logger))
    signals = sys.modules.get("rlm_events.signals")
    fast = sys.modules.get("rlm_events._fast.blinker")
    return {
        "environ": dict(os.environ),
        "handlers": {name: [repr(h) for h in logger.handlers] for name, logger in loggers.items() if logger.handlers},
        "warning_filters": len(warnings.filters),
        "dspy_callbacks": len(dspy.settings.get("callbacks") or []),
        "stage_receivers": sum(len(s.receivers) for s in signals.BY_STAGE.values()) if signals else 0,
        "tracked_signals": len(fast._TRACKED) if fast else 0,
    }

effects = {}
for module in sys.argv[1:]:  # one after the other: each is compared with what the ones before it left
    written.clear()
    before = state()
    importlib.import_module(module)
    after = state()
    changed = {key: [before[key], after[key]] for key in before if before[key] != after[key]}
    if "environ" in changed:
        old, new = changed["environ"]
        changed["environ"] = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if written:
        changed["environ_written"] = sorted(set(written))
    effects[module] = changed
print(json.dumps(effects))
"""


def _import_in_fresh_interpreters(modules: list[str]) -> dict[str, dict[str, object] | str]:
    """Each module's effects, importing ``modules`` one after the other in one fresh interpreter per ordering: the
    public modules as listed, and the same list reversed (so that a module first reached as another's dependency is
    also imported on its own first)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    effects: dict[str, dict[str, object] | str] = {}
    for ordering in (modules, modules[::-1]):
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, *ordering], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
        )
        if done.returncode != 0:
            return {ordering[0]: done.stderr[-2000:]}
        for module, changed in json.loads(done.stdout.strip().splitlines()[-1]).items():
            if changed or module not in effects:
                effects[module] = changed
    return effects


@pytest.fixture(scope="module")
def import_effects() -> dict[str, dict[str, object] | str]:
    return _import_in_fresh_interpreters(_public_modules())


def test_the_public_modules_are_found():
    modules = _public_modules()
    assert {"rlm_events", "rlm_events.builtins", "rlm_events.plan", "rlm_events.demo", "middleware"} <= set(modules)
    assert not any(part.startswith("_") for name in modules for part in name.split("."))


def test_importing_any_public_module_has_no_side_effect(import_effects):
    failed = {module: effect for module, effect in import_effects.items() if isinstance(effect, str)}
    assert not failed, f"modules that do not import: {failed}"
    changed = {module: effect for module, effect in import_effects.items() if effect}
    assert not changed, f"imports with side effects (what changed, before -> after): {changed}"


def test_the_first_instrumentation_turns_the_receivers_fast_path_on():
    code = (
        "import rlm_events; from rlm_events._fast import blinker as fast; from rlm_events.signals import BY_STAGE\n"
        "assert not fast._TRACKED\n"
        "rlm_events.Instrumentation()\n"
        "assert set(fast._TRACKED) == set(BY_STAGE.values()), fast._TRACKED\n"
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr


def test_one_version_source():
    """``rlm_events.__version__`` is the package's version: pyproject.toml reads it (hatch's dynamic version)."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and "\nversion =" not in project
    assert '[tool.hatch.version]\npath = "rlm_events/__init__.py"' in pyproject
    parts = rlm_events.__version__.split(".")
    assert len(parts) >= 3 and all(p.isdigit() for p in parts[:3]), rlm_events.__version__
