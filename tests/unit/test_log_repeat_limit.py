"""Repetitive log lines are limited and counted, never lost silently (issue 8, item 10)."""

from __future__ import annotations

import logging
import time

from oms import metrics
from oms.logs import RepeatLimit


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logger(name: str, limit: RepeatLimit) -> tuple[logging.Logger, Kept]:
    kept = Kept()
    kept.addFilter(limit)
    logger = logging.getLogger(name)
    logger.handlers[:] = [kept]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, kept


def test_a_flood_of_one_kind_keeps_a_burst_and_counts_the_rest() -> None:
    logger, kept = _logger("oms.test.flood", RepeatLimit(burst=10, window_s=60))
    before = metrics.LOG_LINES_SUPPRESSED.labels("oms.test.flood")._value.get()
    for n in range(100):
        logger.warning("request failed: %s", f"error {n}")  # one kind, whatever the text
    logger.warning("another kind of line")
    logger.error("errors always pass: %s", 1)
    messages = [r.getMessage() for r in kept.records]
    assert len([m for m in messages if m.startswith("request failed")]) == 10
    assert "another kind of line" in messages
    assert "errors always pass: 1" in messages
    after = metrics.LOG_LINES_SUPPRESSED.labels("oms.test.flood")._value.get()
    assert after - before == 90


def test_the_first_line_after_the_window_says_how_many_were_dropped() -> None:
    logger, kept = _logger("oms.test.window", RepeatLimit(burst=2, window_s=0.05))
    for _ in range(7):
        logger.warning("broker down")
    time.sleep(0.06)
    logger.warning("broker down")
    assert len(kept.records) == 3
    assert kept.records[-1].__dict__["suppressed"] == 5
