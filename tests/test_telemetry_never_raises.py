"""Telemetry never raises into the application: a trace that cannot be written (a full disk) is logged, once.

Real `dspy.RLM` calls with a scripted LM; the full disk is Linux's `/dev/full` (every write fails with ENOSPC) or a
file object whose writes fail the same way.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events.trace.writer import JsonlTrace

full_disk = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


class FullDiskFile:
    """A text file whose writes and flushes fail with ENOSPC."""

    name = "full-disk.jsonl"

    def __init__(self) -> None:
        self.attempts = 0

    def write(self, text: str) -> int:
        self.attempts += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rlm_events" and r.levelno >= logging.WARNING]


@full_disk
def test_leaving_the_with_block_on_a_full_disk_does_not_raise(make_rlm, caplog):
    rlm, lm = make_rlm(["x = 6 * 7", "SUBMIT(answer=str(x))"])
    events = rlm_events.instrument(rlm)
    caplog.set_level(logging.DEBUG, logger="rlm_events")
    with JsonlTrace("/dev/full") as trace, dspy.context(lm=lm):
        trace.install(events)
        for _ in range(3):
            assert rlm(text="t").answer == "42"
    # Every event's line failed, and the final flush too: counted, and one warning for all of them.
    assert trace.write_errors >= 3 * 6
    (warning,) = warnings_of(caplog)
    assert "/dev/full" in warning.getMessage() and "No space left on device" in warning.getMessage()
    trace.close()  # idempotent, still silent
    assert len(warnings_of(caplog)) == 1


@full_disk
def test_close_after_a_failed_flush_closes_the_file_and_does_not_raise(caplog):
    trace = JsonlTrace("/dev/full")
    trace._file.write("pending\n")  # buffered: only close() flushes it, into a full disk
    trace.close()
    assert trace._file.closed and trace.write_errors == 1
    assert len(warnings_of(caplog)) == 1


def test_a_file_object_that_cannot_be_written_never_reaches_the_run(make_rlm, caplog):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    file = FullDiskFile()
    seen: list[Any] = []
    events.tap(seen.append)
    with JsonlTrace(file) as trace, dspy.context(lm=lm):
        trace.install(events)
        for _ in range(5):
            assert rlm(text="t").answer == "ok"
    assert file.attempts == trace.write_errors == len(seen) > 0  # every event: tried, failed, counted
    assert trace._runs == {}  # the run_end still closed each run
    (warning,) = warnings_of(caplog)
    assert "full-disk.jsonl" in warning.getMessage()


def test_a_file_closed_by_its_owner_is_a_write_error_not_a_crash(make_rlm, tmp_path, caplog):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    file = open(tmp_path / "t.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - closed below, on purpose early
    trace = JsonlTrace(file)
    trace.install(events)
    file.close()
    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "ok"
    rlm_events.flush()  # the trace writes its lines on the tap delivery worker
    assert trace.write_errors > 0
    assert len(warnings_of(caplog)) == 1
    trace.close()
