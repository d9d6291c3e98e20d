"""Moved: the trace viewer is :mod:`rlm_events.trace.viewer`, the reader :mod:`rlm_events.trace.reader`. This module
re-exports the names it had."""

from __future__ import annotations

from .trace.reader import Trace, read_trace
from .trace.viewer import render_html, write_html

__all__ = ["Trace", "read_trace", "render_html", "write_html"]
