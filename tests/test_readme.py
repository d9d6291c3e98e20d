"""Every ```python block of the README runs. Blocks of one ``##`` section share a namespace, in order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dspy
import pytest

from rlm_events.runtime import constructor_of

README = Path(__file__).resolve().parent.parent / "README.md"
OPTIONAL = {"mlflow", "opentelemetry", "rich"}  # modules of optional extras the examples use


def sections() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for part in re.split(r"^## ", README.read_text(), flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.M | re.S)
        if blocks:
            found.append((title, blocks))
    return found


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


def test_the_readme_has_examples():
    assert sum(len(blocks) for _, blocks in sections()) >= 3


@pytest.mark.parametrize(("title", "blocks"), sections(), ids=[t for t, _ in sections()])
def test_readme_section_runs(title, blocks, capsys, modern_rlm_constructor):
    namespace: dict[str, object] = {"__name__": f"readme_{title}"}
    for block in blocks:
        try:
            exec(compile(block, f"README.md ({title})", "exec"), namespace)
        except ModuleNotFoundError as exc:  # an optional extra's example, where that extra is not installed
            if (exc.name or "").split(".")[0] not in OPTIONAL:
                raise
            pytest.skip(f"README section {title!r} needs {exc.name}, which is not installed")
