"""Every ```python block of the README runs. Blocks of one ``##`` section share a namespace, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def sections() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for part in re.split(r"^## ", README.read_text(), flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.M | re.S)
        if blocks:
            found.append((title, blocks))
    return found


def test_the_readme_has_examples():
    assert sum(len(blocks) for _, blocks in sections()) >= 3


@pytest.mark.parametrize(("title", "blocks"), sections(), ids=[t for t, _ in sections()])
def test_readme_section_runs(title, blocks, capsys):
    namespace: dict[str, object] = {"__name__": f"readme_{title}"}
    for block in blocks:
        exec(compile(block, f"README.md ({title})", "exec"), namespace)
