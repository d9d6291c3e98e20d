"""Moved: the JSONL trace tap is [`rlm_events.trace.JsonlTrace`][rlm_events.trace.JsonlTrace]
(`rlm_events.trace.writer`), its format
`rlm_events.trace.schema`. This module re-exports the names it had."""

from __future__ import annotations

from ..trace.schema import SCHEMA_VERSION as SCHEMA
from ..trace.writer import JsonlTrace, usage_of
from ._text import is_error_result, preview

__all__ = ["SCHEMA", "JsonlTrace", "is_error_result", "preview", "usage_of"]
