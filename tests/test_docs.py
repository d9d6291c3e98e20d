"""The API reference site (mkdocs.yml, docs/): every public name of every public module is on it.

The page checks read mkdocs.yml and docs/reference/ only. The build check runs ``mkdocs build --strict`` into a
temporary directory and looks up each public name's anchor in the built pages; it needs the ``docs`` extra
(``pip install -e ".[docs]"``) and is skipped without it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MKDOCS_YML = ROOT / "mkdocs.yml"
REFERENCE = ROOT / "docs" / "reference"

# The public API: the package top level, its public subpackages and modules, and the chain engine.
PUBLIC_MODULES = [
    "rlm_events",
    "rlm_events.builtins",
    "rlm_events.guard",
    "rlm_events.guard.allowlist",
    "rlm_events.speculate",
    "rlm_events.inprocess",
    "rlm_events.taps",
    "rlm_events.taps.jsonl",
    "rlm_events.taps.logs",
    "rlm_events.taps.mlflow",
    "rlm_events.taps.otel",
    "rlm_events.taps.progress",
    "rlm_events.taps.timings",
    "rlm_events.trace",
    "rlm_events.lm_usage",
    "rlm_events.pricing",
    "rlm_events.local_openai",
    "rlm_events.installable",
    "rlm_events.runtime",
    "rlm_events.sandbox",
    "rlm_events.hooks",
    "rlm_events.replay",
    "rlm_events.durable",
    "rlm_events.testing",
    "rlm_events.signals",
    "middleware",
]

_DIRECTIVE = re.compile(r"^:::\s*(?P<ident>[\w.]+)\s*$", re.M)
DOCS_DEPS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _reference_pages() -> dict[str, Path]:
    """``{module: page}`` for every ``::: module`` directive under docs/reference/."""
    pages: dict[str, Path] = {}
    for page in sorted(REFERENCE.rglob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            pages[match["ident"]] = page
    return pages


def _nav_pages() -> set[str]:
    """The ``.md`` paths (relative to docs/) that mkdocs.yml's ``nav`` lists."""
    nav = MKDOCS_YML.read_text(encoding="utf-8").split("\nnav:", 1)[1]
    return set(re.findall(r"([\w/.-]+\.md)\s*$", nav, re.M))


def _public_names(module: str) -> list[str]:
    return list(importlib.import_module(module).__all__)


def test_every_public_module_has_a_reference_page_in_the_nav() -> None:
    pages = _reference_pages()
    missing = [m for m in PUBLIC_MODULES if m not in pages]
    assert not missing, f"no docs/reference/*.md page has '::: {missing[0]}' (missing: {missing})"
    nav = _nav_pages()
    unlisted = [str(p.relative_to(ROOT / "docs")) for p in pages.values()]
    unlisted = [p for p in unlisted if p not in nav]
    assert not unlisted, f"reference pages missing from mkdocs.yml's nav: {unlisted}"


def test_every_reference_directive_names_an_importable_module() -> None:
    for ident in _reference_pages():
        importlib.import_module(ident)  # a renamed or removed module fails here, naming it


def test_public_submodule_names_have_their_own_page() -> None:
    """``show_submodules: false`` keeps submodules off their parent's page: one in ``__all__`` needs its own."""
    pages = _reference_pages()
    for module in PUBLIC_MODULES:
        for name in _public_names(module):
            value = getattr(importlib.import_module(module), name)
            if isinstance(value, types.ModuleType):
                assert value.__name__ in pages, f"{module}.{name} is a module: it needs a '::: {value.__name__}' page"


def test_mkdocs_yml_builds_strictly_with_the_public_filter() -> None:
    text = MKDOCS_YML.read_text(encoding="utf-8")
    for setting in ("strict: true", "filters: public", "show_submodules: false", "show_signature_annotations: true"):
        assert setting in text, f"mkdocs.yml lost {setting!r}"


_REST = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`|(?<!`)``[^`]+``(?!`)|::\s*$", re.M)
_FENCED = re.compile(r"^\s*```.*?^\s*```", re.M | re.S)  # code blocks show their text as it is


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every docstring and attribute docstring (a string statement) in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        body = getattr(node, "body", None)
        for stmt in body if isinstance(body, list) else []:
            value = stmt.value if isinstance(stmt, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append((stmt.lineno, value.value))
    return found


def test_docstrings_are_markdown_not_rest() -> None:
    """mkdocstrings renders docstrings as Markdown: a reST role or ````literal```` would show up raw on the site."""
    left = []
    for package in ("rlm_events", "middleware"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, text in _docstrings(path):
                left += [f"{path.relative_to(ROOT)}:{line}: {m[0]!r}" for m in _REST.finditer(_FENCED.sub("", text))]
    assert not left, "reST left in docstrings (use `code` and [`Name`][full.path]):\n" + "\n".join(left)


def _docs_deps_missing() -> list[str]:
    return [m for m in DOCS_DEPS if importlib.util.find_spec(m.split(".")[0]) is None]


@pytest.mark.skipif(bool(_docs_deps_missing()), reason="the docs extra is not installed: pip install -e '.[docs]'")
def test_site_builds_strictly_and_renders_every_public_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env["NO_MKDOCS_2_WARNING"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(MKDOCS_YML), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)

    pages = _reference_pages()
    anchors: set[str] = set()
    for page in pages.values():
        rel = page.relative_to(ROOT / "docs").with_suffix("")
        html_file = site / (rel.parent if rel.name == "index" else rel) / "index.html"
        anchors |= set(re.findall(r'id="([^"]+)"', html_file.read_text(encoding="utf-8")))

    missing = []
    for module in PUBLIC_MODULES:
        assert module in anchors, f"the page of {module} does not render it"
        missing += [f"{module}.{name}" for name in _public_names(module) if f"{module}.{name}" not in anchors]
    assert not missing, f"public names the built reference does not render: {missing}"
