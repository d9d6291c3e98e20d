"""Optional dependencies: one way to say which extra to install when an optional package is missing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


def missing_extra(needed_by: str, what: str, extra: str, hint: str = "") -> str:
    """The message for `needed_by` lacking `what`: names the `extra` and its `pip install` command, then `hint`
    (an alternative) in parentheses."""
    message = f"{needed_by} needs {what}, from the optional extra '{extra}': pip install 'rlm-events[{extra}]'"
    return f"{message} ({hint})" if hint else message


@contextmanager
def requiring(
    extra: str, needed_by: str, what: str, *, hint: str = "", error: Callable[[str], Exception] = ImportError
) -> Iterator[None]:
    """Run the block's imports of an optional package: an `ImportError` among them is raised again as
    `error(missing_extra(needed_by, what, extra, hint))`, chained to the original."""
    try:
        yield
    except ImportError as exc:
        raise error(missing_extra(needed_by, what, extra, hint)) from exc


__all__ = ["missing_extra", "requiring"]
