"""Logging a failure with its traceback from any thread, without racing the AST conversions of running calls."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any


def log_failure(logger: logging.Logger, level: int, message: str, *args: Any, traceback_too: bool = True) -> None:
    """Log `message % args` at `level` with the exception being handled (as `logger.log(..., exc_info=True)`).

    Guarantee: the traceback is formatted here, by [`converted()`][rlm_events._ast.converted], and stored on the
    record (`exc_text`), so no handler formats it again. Why: Python 3.11+ parses the source lines of a traceback
    to underline them, and on the tap delivery worker that parse would otherwise run at the same time as a call's
    interpreter or guard parsing the LM's code (CPython 3.11 fails one of them with a `SystemError`). Never raises.
    """
    if not logger.isEnabledFor(level):
        return
    from ._ast import converted  # on the first failure only: the core does not import the code readers

    exc_info = sys.exc_info() if traceback_too else (None, None, None)
    try:
        text = None
        if exc_info[1] is not None:
            text = converted(lambda: "".join(traceback.format_exception(*exc_info)).rstrip("\n"))
        caller = sys._getframe(1)  # where log_failure was called, as logger.log records it
        code = caller.f_code
        record = logger.makeRecord(
            logger.name, level, code.co_filename, caller.f_lineno, message, args, exc_info if text else None,
            code.co_name,
        )  # fmt: skip
        record.exc_text = text
        logger.handle(record)
    except Exception:  # logging must not break what it reports on
        logger.log(level, message, *args)


__all__ = ["log_failure"]
