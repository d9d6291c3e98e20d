"""The file rules: `open` and the archive openers only with a literal mode that reads, `.open(mode)` on any
object, and keyword arguments that make an allowed function write files."""

from __future__ import annotations

import ast
import re

from . import allowlist
from ._hints import OPEN_HINT
from ._resolve import Resolver

_MODE = re.compile(r"[rwxabtU+]{1,4}")


class FileRules(Resolver):
    """Calls that could open a file for writing."""

    def check_open_mode(self, node: ast.Call, target: str, position: int) -> None:
        """`target(...)` opens a file: its mode (argument `position` or `mode=`) must be a literal that reads."""
        mode: ast.expr | None = node.args[position] if len(node.args) > position else None
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.flag(node, "write", target, f"{target}(*args): a mode the guard cannot see", OPEN_HINT)
            return
        for keyword in node.keywords:
            if keyword.arg is None:
                self.flag(node, "write", target, f"{target}(**kwargs): a mode the guard cannot see", OPEN_HINT)
                return
            if keyword.arg == "mode":
                mode = keyword.value
            elif keyword.arg == "opener":
                self.flag(node, "write", target, f"{target}(..., opener=...)", OPEN_HINT)
        if mode is None:
            return  # the default mode reads
        unseen = f"{target}() with a mode that is not a literal"
        for text in sorted(self.visible_strings(node, mode, ("write", target, unseen, OPEN_HINT))):
            if set(text.split(":")[0]) & set("wax+"):
                self.flag(node, "write", target, f"{target}(..., {text!r}) opens a file for writing", OPEN_HINT)

    def check_method_open(self, node: ast.Call) -> None:
        """`Path(...).open(mode)`, `ZipFile.open(name, mode)`: a positional argument counts as a mode only when
        it looks like one."""
        for position in (0, 1):
            arg = node.args[position] if len(node.args) > position else None
            text = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ""
            if _MODE.fullmatch(text) and set(text) & set("wax+"):
                self.flag(node, "write", ".open", f".open(..., {text!r}) opens a file for writing", OPEN_HINT)
        for keyword in node.keywords:
            if keyword.arg == "mode":
                self.check_open_mode(node, ".open", position=99)

    def check_writing_keywords(self, node: ast.Call, path: str) -> None:
        """`path(...)` writes files when given one of its writing keywords (or `**kwargs`)."""
        for keyword in node.keywords:
            if keyword.arg is None or keyword.arg in allowlist.WRITING_KEYWORDS[path]:
                shown = "**kwargs" if keyword.arg is None else f"{keyword.arg}="
                self.flag(node, "write", path, f"{path}({shown}...) can write files", "log with print() instead")


__all__ = ["FileRules"]
