"""The demo's per-minute report: each minute's events judged by the producer's labels."""

from __future__ import annotations

import time

import numpy as np

from stream_ae.tools.demo import Tally


def test_each_minute_counts_its_own_events_flagged_or_not() -> None:
    now = time.monotonic()
    tally = Tally(started=now - 3.5 * 60)  # the block below is sent in minute 3 (counted from 0)
    first = [{"id": f"a{i}"} for i in range(1000)]
    y_first = np.zeros(1000, dtype=int)
    y_first[:10] = 1  # ten frauds
    tally.on_block(first, y_first)
    tally.flagged |= {"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a500", "a501"}  # 8 frauds, 2 false alarms
    m = tally.minute(3)
    assert (m.normal, m.frauds, m.found, m.false_alarms) == (990, 10, 8, 2)
    assert m.recall == 0.8 and m.precision == 0.8 and abs(m.false_alarm_rate - 2 / 990) < 1e-12
    assert tally.minute(4).normal == 0 and np.isnan(tally.minute(4).recall), "a minute with no events says so"
