"""Every ```python block of the README and of the documentation pages (docs/*.md, docs/guide/*.md) runs.

A page is cut into sections at its ``## `` headings (what comes before the first one is the page's own section,
named by its ``# `` title). The blocks of one section share a namespace and run in order; each section is a test,
``README.md: Quick start`` or ``docs/guide/builtins.md: What a Budget counts``. The only skip: a section whose
example imports an optional extra (MLflow, OpenTelemetry, rich) that is not installed, and the test says so.

The counting tests make sure no block escapes: every fence of a page is counted independently of the collector, and
any fence that is neither run (``python``) nor declared as something else to show (``bash``, ``text``, ``diff``)
fails, as does a ``python`` fence the collector did not find (indented in a list, say).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dspy
import pytest

from rlm_events.runtime import constructor_of

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUIDE = DOCS / "guide"
OPTIONAL = {"mlflow", "opentelemetry", "rich"}  # modules of optional extras the examples use
SHOWN_ONLY = {"bash", "text", "diff"}  # fences that are shown, not run: commands, transcripts, a diff

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
_ANY_FENCE = re.compile(r"^[ \t]*```+[ \t]*([\w+-]*)", re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    """The README, then every documentation page but the reference's ``::: module`` pages, in name order."""
    return [README, *sorted(DOCS.glob("*.md")), *sorted(GUIDE.glob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def sections_of(page: Path) -> list[tuple[str, list[str]]]:
    """``[(title, [python block, ...]), ...]`` of ``page``, one entry per section that has blocks."""
    text = page.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)
    title = re.search(r"^# (.+)$", parts[0], flags=re.M)
    named = [((title[1] if title else "top").strip(), parts[0])]
    named += [(part.splitlines()[0].strip(), part) for part in parts[1:]]
    return [(name, blocks) for name, part in named if (blocks := _PYTHON_BLOCK.findall(part))]


def sections() -> list[tuple[str, list[str]]]:
    """Every section with examples, of every page: ``("docs/guide/x.md: Title", blocks)``."""
    return [(f"{page_name(page)}: {title}", blocks) for page in pages() for title, blocks in sections_of(page)]


@pytest.fixture
def modern_rlm_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples build ``dspy.RLM(..., max_iters=..., interpreter_factory=...)``, the DSPy 3.3+ constructor. On
    older DSPy, and only while an example runs, ``dspy.RLM`` translates those arguments as
    ``rlm_events.testing.build_rlm`` does, so the examples are checked on every supported release."""
    constructor = constructor_of(dspy.RLM)
    if constructor.takes_factory and constructor.limit == "max_iters":
        return
    original = dspy.RLM.__init__

    def __init__(self: dspy.RLM, signature: Any, **kwargs: Any) -> None:
        translated, factory = constructor.arguments(**kwargs)
        original(self, signature, **translated)
        constructor.finish(self, factory)

    monkeypatch.setattr(dspy.RLM, "__init__", __init__)


def test_the_readme_and_every_guide_page_have_examples():
    assert sum(len(blocks) for _, blocks in sections_of(README)) >= 1
    guide = sorted(GUIDE.glob("*.md"))
    assert len(guide) >= 10, f"the guide has {len(guide)} pages under {GUIDE}"
    # Pages without a runnable example, on purpose: everything they show is a command or a table.
    prose_only = {"development.md", "performance.md"}
    without = [p.name for p in guide if not sections_of(p) and p.name not in prose_only]
    assert not without, f"guide pages with no ```python example: {without}"


@pytest.mark.parametrize("page", pages(), ids=page_name)
def test_every_python_block_of_a_page_is_collected(page: Path):
    """Counted apart from the collector: a block the collector misses (indented, misspelt, unclosed) fails here."""
    text = page.read_text(encoding="utf-8")
    fences = _ANY_FENCE.findall(text)
    assert len(fences) % 2 == 0, f"{page_name(page)}: a ``` fence is not closed"
    openings = fences[0::2]
    unknown = sorted({lang or "(no language)" for lang in openings} - SHOWN_ONLY - {"python"})
    assert not unknown, f"{page_name(page)}: fences that are neither run nor shown-only: {unknown}"
    collected = sum(len(blocks) for _, blocks in sections_of(page))
    assert collected == openings.count("python"), (
        f"{page_name(page)}: {openings.count('python')} ```python fences, {collected} collected to run"
    )


@pytest.mark.parametrize(("title", "blocks"), sections(), ids=[t for t, _ in sections()])
def test_example_section_runs(title, blocks, capsys, modern_rlm_constructor, tmp_path, monkeypatch):
    # In a working directory of its own, as in a user's project: what an example (or a library it calls: MLflow
    # keeps a SQLite store's trace artifacts under ./mlruns) writes to relative paths never lands in the checkout.
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"example_{title}"}
    for block in blocks:
        try:
            exec(compile(block, title, "exec"), namespace)
        except ModuleNotFoundError as exc:  # an optional extra's example, where that extra is not installed
            if (exc.name or "").split(".")[0] not in OPTIONAL:
                raise
            pytest.skip(f"section {title!r} needs {exc.name}, which is not installed")


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and mkdocs' ``toc`` both make it (for headings of words, spaces, punctuation)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


@pytest.mark.parametrize("page", pages(), ids=page_name)
def test_relative_links_reach_a_file_and_a_heading(page: Path):
    """The README's links into the guide (which no site build checks) and the pages' links between themselves."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page_name(page)}: the link {target!r} reaches no file"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#{1,6} (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page_name(page)}: no heading for the link {target!r}"
