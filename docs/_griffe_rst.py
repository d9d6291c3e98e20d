"""Griffe extension for this site: render the reST-flavoured docstrings of rlm-events as Markdown.

The docstrings are written for ``help()`` and Sphinx-style readers: ``literal``, :role:`target` cross-references,
simple ``=====`` tables, ``>>>`` examples and ``::`` literal blocks. mkdocstrings renders Markdown, so each
docstring of the loaded packages is rewritten once, when griffe has loaded a package:

* ````x```` becomes ```x```;
* ``:class:`X``` / ``:func:`` / ``:meth:`` / ``:attr:`` / ``:mod:`` / ``:data:`` / ``:exc:`` / ``:obj:`` become
  autorefs cross-references (``~`` shows the last name only). A name is resolved in the scope of the documented
  object, as Python would; one that names rlm-events or middleware but resolves to nothing is logged as a warning
  (so ``mkdocs build --strict`` fails on a stale reference), one that names another package is shown as code;
* a simple table becomes a Markdown table, a ``>>>`` example a ``pycon`` block, a ``::`` literal block a ``text``
  block.

The source files are not touched: ``help()`` still shows the docstrings as written.
"""

from __future__ import annotations

import logging
import re
import textwrap
from typing import Any

import griffe

# mkdocs counts warnings of loggers under "mkdocs": with strict: true, one fails the build.
logger = logging.getLogger("mkdocs.plugins.rlm_events_docs")

OWN_PACKAGES = ("rlm_events", "middleware")

_BORDER = re.compile(r"^(?P<indent>\s*)=+( +=+)+\s*$")
_ROLE = re.compile(r":(?P<role>class|func|meth|attr|mod|data|exc|obj):`(?P<body>[^`]+)`")
_LITERAL = re.compile(r"``(?P<text>(?:(?!``).)+?)``", re.S)


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring of a loaded package (not of aliases: they show their target's)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name in OWN_PACKAGES:
            _rewrite_tree(pkg, loader)


def _rewrite_tree(obj: griffe.Object, loader: griffe.GriffeLoader) -> None:
    if obj.docstring is not None:
        obj.docstring.value = convert(obj.docstring.value, obj, loader)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite_tree(member, loader)  # type: ignore[arg-type]


def convert(text: str, obj: griffe.Object | None = None, loader: Any = None) -> str:
    """``text`` (a reST-flavoured docstring) as Markdown; cross-references resolved in ``obj``'s scope."""
    lines = text.split("\n")
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if prose:
            out.extend(_inline("\n".join(prose), obj, loader).split("\n"))
            prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            flush()
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out.extend(_fence("pycon", block, indent))
            continue
        if _BORDER.match(line):
            end = _table_end(lines, i)
            if end is not None:
                flush()
                out.extend(_table(lines[i : end + 1], obj, loader))
                i = end + 1
                continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            indent_len = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent_len):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                head = line.rstrip()[:-1]  # "Every line::" -> "Every line:"; a bare "::" is dropped
                if head.strip() != ":":
                    prose.append(head)
                flush()
                indent = line[:indent_len]
                out.append("")
                out.extend(_fence("text", block, indent))
                out.append("")
                i = j
                continue
        prose.append(line)
        i += 1
    flush()
    return "\n".join(out)


def _fence(lang: str, block: list[str], indent: str) -> list[str]:
    body = textwrap.dedent("\n".join(block)).split("\n")
    return [f"{indent}```{lang}", *(f"{indent}{b}" if b else "" for b in body), f"{indent}```"]


def _table_end(lines: list[str], start: int) -> int | None:
    """Index of a simple table's closing border (its third ``=====`` line), or ``None``."""
    borders = 0
    for k in range(start, len(lines)):
        if _BORDER.match(lines[k]):
            borders += 1
            if borders == 3:
                return k
        elif not lines[k].strip():
            return None
    return None


def _table(rows: list[str], obj: griffe.Object | None, loader: Any) -> list[str]:
    border = rows[0]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    starts = [s for s, _ in spans]
    parsed: list[list[str]] = []
    header_done = False
    header: list[str] = []
    for row in rows[1:]:
        if _BORDER.match(row):
            if not header_done:
                header, parsed, header_done = parsed[0] if parsed else [], [], True
            continue
        cells = []
        for n, start in enumerate(starts):
            stop = starts[n + 1] if n + 1 < len(starts) else None
            cells.append(row[start:stop].strip() if stop else row[start:].strip())
        if parsed and not cells[0]:  # continuation line: first column empty
            parsed[-1] = [f"{a} {b}".strip() for a, b in zip(parsed[-1], cells, strict=True)]
        else:
            parsed.append(cells)
    indent = border[: len(border) - len(border.lstrip())]

    def md_row(cells: list[str]) -> str:
        text = " | ".join(_inline(c, obj, loader).replace("|", "\\|") for c in cells)
        return f"{indent}| {text} |"

    return ["", md_row(header), f"{indent}|{' --- |' * len(starts)}", *(md_row(r) for r in parsed), ""]


def _inline(text: str, obj: griffe.Object | None, loader: Any) -> str:
    text = _ROLE.sub(lambda m: _xref(m["role"], m["body"], obj, loader), text)
    return _LITERAL.sub(lambda m: _code(m["text"]), text)


def _code(text: str) -> str:
    text = text.replace("\n", " ")
    if "`" in text:
        return f"`` {text} ``"
    return f"`{text}`"


def _xref(role: str, body: str, obj: griffe.Object | None, loader: Any) -> str:
    title_match = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
    if title_match:
        title, target = title_match["title"], title_match["target"]
    else:
        target = body
        title = ""
    short = target.startswith("~")
    target = target.lstrip("~.").removesuffix("()")
    if not title:
        title = target.rsplit(".", 1)[-1] if short else target
        if role in ("func", "meth") and not title.endswith(")"):
            title += "()"
    path, external = _resolve(target, obj, loader)
    external = external or (role == "mod" and target.split(".", 1)[0] not in OWN_PACKAGES)  # e.g. :mod:`contextvars`
    if path is not None:
        # optional: autorefs links it where the target is rendered (public names, and private ones through their
        # public alias) and leaves the code text where it is not (a private helper the docstring mentions).
        return f'<autoref identifier="{path}" optional>{_html_code(title)}</autoref>'
    if not external:
        where = obj.path if obj is not None else "?"
        logger.warning("docstring of %s: :%s:`%s` names nothing in rlm-events or middleware", where, role, body)
    return _code(title)


def _html_code(text: str) -> str:
    return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "</code>"


def _resolve(target: str, obj: griffe.Object | None, loader: Any) -> tuple[str | None, bool]:
    """``(path, external)``: what ``target`` names in ``obj``'s scope, or whether it names another package."""
    first, _, rest = target.partition(".")
    candidates = []
    if obj is not None:
        scope = obj if obj.is_module or obj.is_class else obj.parent
        while scope is not None:
            try:
                base = scope.resolve(first)
            except griffe.NameResolutionError:
                scope = scope.parent
                continue
            candidates.append(f"{base}.{rest}" if rest else base)
            break
    found_in_scope = len(candidates) == 1
    candidates.append(target)
    for path in candidates:
        if path.split(".", 1)[0] in OWN_PACKAGES and loader is not None and _exists(path, loader):
            return path, False
    # A name imported from another package (``dspy``, ``contextvars``), or a dotted path into one.
    head = candidates[0].split(".", 1)[0]
    external = head not in OWN_PACKAGES and (found_in_scope or ("." in target and not head[:1].isupper()))
    return None, external


def _exists(path: str, loader: Any) -> bool:
    top = path.split(".", 1)[0]
    if top not in loader.modules_collection:
        loader.load(top)  # a reference into the other package of this project, not loaded yet
    try:
        loader.modules_collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True
