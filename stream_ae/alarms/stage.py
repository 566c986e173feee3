"""The post-score stage: decode -> features -> score -> **alarms** -> route.

Runs when the schema's entity section declares ``alarm`` (:class:`~stream_ae.entities.spec.AlarmSpec`).
For every scored row of a batch it asks the entity store to judge the row's raw score
against its entity's post-score state (:meth:`~stream_ae.entities.store.EntityStore.judge`,
the batch function :mod:`stream_ae.entities.alarm`), partition by partition in offset order,
within the same batch as the features. The worker (:mod:`stream_ae.pipeline`) and the offline
tools (``stream-ae score``) both call :func:`judge_rows` on a :class:`Featurized` batch, so
they publish the same scores and open the same incidents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.alarm import Judged, alarm_threshold
from stream_ae.entities.spec import AlarmSpec
from stream_ae.entities.table import NO_TIME
from stream_ae.features.featurize import EntityRows, Featurized
from stream_ae.models import AutoencoderDetector

__all__ = ["Alarms", "IncidentChange", "alarm_threshold", "incident_id", "judge_rows", "model_alarm_threshold"]


@dataclass
class Alarms:
    """A batch's post-score results, one entry per row of the model input; each row's entity
    is read from the partition group it came in (``groups[group_of[row]]``, at ``position``)."""

    judged: Judged
    threshold: float  # on the published score
    cooldown_s: float  # 0: no incidents
    groups: list[EntityRows]
    group_of: NDArray[np.int64]
    position: NDArray[np.int64]

    def entity(self, row: int) -> str:
        """Row ``row``'s entity, as text."""
        key = self.groups[int(self.group_of[row])].events.keys[int(self.position[row])]
        return key.decode("utf-8", "replace")

    def event_ms(self, row: int) -> int:
        """Row ``row``'s event time (the entity state's clock), epoch milliseconds."""
        return int(self.groups[int(self.group_of[row])].events.times_ms[int(self.position[row])])

    def incident(self, row: int) -> str | None:
        """The id of the incident row ``row``'s alarm belongs to (None: no alarm, or no incidents)."""
        at = int(self.judged.incident_ms[row])
        return incident_id(self.entity(row), at) if at != NO_TIME else None

    def changes(self) -> list[IncidentChange]:
        """What the batch did to incidents, in row order, coalesced per incident: its opening,
        one ``updated`` at its latest alarm in the batch (unless the batch also closes it), and
        its closing (at the entity's first event after the cooldown, or when the entity's
        state expires first). The worker writes one incident
        record per change; ``stream-ae score`` and the tests read the same list."""
        if not self.cooldown_s:
            return []
        j = self.judged
        # (row, order within the row, change): a closure by the row's own event comes before the
        # row's alarm (it may open the next incident), one by expiry after every change of the row
        found: list[tuple[int, int, IncidentChange]] = []
        for c in j.closures:
            entity = c.key.decode("utf-8", "replace") if c.key is not None else self.entity(c.row)
            change = IncidentChange(
                c.row, incident_id(entity, c.opened_ms), entity, "closed", c.opened_ms, c.closed_ms, c.alarms, c.peak
            )
            found.append((c.row, 2 if c.expired else 0, change))
        for row in np.flatnonzero(j.alarm & (j.incident_ms != NO_TIME)).tolist():
            entity = self.entity(row)
            opened = int(j.incident_ms[row])
            change = IncidentChange(
                row, incident_id(entity, opened), entity, "opened" if j.opens[row] else "updated", opened,
                self.event_ms(row), int(j.incident_alarms[row]), float(j.incident_peak[row]),
            )  # fmt: skip
            found.append((row, 1, change))
        found.sort(key=lambda f: (f[0], f[1]))
        out: list[IncidentChange | None] = []
        pending: dict[str, int] = {}  # incident -> index of its latest "updated" in out
        for _, _, change in found:
            if change.status != "opened" and change.incident_id in pending:
                out[pending.pop(change.incident_id)] = None  # superseded in the same batch
            if change.status == "updated":
                pending[change.incident_id] = len(out)
            out.append(change)
        return [c for c in out if c is not None]


@dataclass(frozen=True)
class IncidentChange:
    """One change of an incident: the batch ``row`` it was found at, the incident and its
    entity, ``status`` (opened, updated, closed), when it opened, when the change happened
    (``event_ms``: the alarm's event time; for a closing, the latest alarm plus the cooldown),
    and the incident's alarms and peak published score as of then."""

    row: int
    incident_id: str
    entity: str
    status: str
    opened_ms: int
    event_ms: int
    alarms: int
    peak_score: float


def incident_id(entity: str, opened_ms: int) -> str:
    """``<entity>@<opening event time, epoch ms>``: the same in the worker and offline."""
    return f"{entity}@{opened_ms}"


def judge_rows(feats: Featurized, raw: NDArray[np.float64], detector: AutoencoderDetector) -> Alarms:
    """The post-score stage on a featurized batch whose rows ``detector`` scored ``raw``.

    With ``likelihood`` the entity state holds the raw scores in units of the model's
    calibrated raw threshold, or with ``calibrated`` as standard normal quantiles of the
    model's calibration distribution (:meth:`~stream_ae.scoring.threshold.Threshold.normal_scores`:
    the likelihood's Gaussian tail then fits normal traffic, where on heavy-tailed raw scores
    alarms run at up to ten times the target rate). Either way the published score does not
    depend on the model's unit, and a refreshed model (another scale of raw scores) continues
    each entity's history where the old one left it instead of starting an alarm storm."""
    store = feats.store
    if store is None or store.spec.alarm is None:
        raise ValueError("the schema declares no alarm section (entity: alarm:)")
    alarm = store.spec.alarm
    threshold = model_alarm_threshold(detector, alarm)
    n = len(raw)
    out = Judged.empty(n)
    group_of = np.zeros(n, dtype=np.int64)
    position = np.zeros(n, dtype=np.int64)
    values = np.asarray(raw, dtype=np.float64)
    if alarm.likelihood and alarm.calibrated and detector.threshold is not None:
        values = detector.threshold.normal_scores(values)
    elif alarm.likelihood and detector.threshold_ > 0:
        values = values / float(detector.threshold_)
    for gi, (group, delta) in enumerate(zip(feats.groups, feats.deltas, strict=True)):
        judged = store.judge(group.events, values[group.rows], threshold, delta)
        rows = group.rows
        out.put(rows, judged)
        group_of[rows], position[rows] = gi, np.arange(len(rows))
    return Alarms(out, threshold, alarm.cooldown or 0.0, feats.groups, group_of, position)


def model_alarm_threshold(detector: AutoencoderDetector, alarm: AlarmSpec | None) -> float:
    """What a model's alarms are judged on: the published score's threshold with an alarm
    section (:func:`alarm_threshold`, at the model's calibrated false-alarm rate), else its
    calibrated raw threshold."""
    if alarm is None:
        return float(detector.threshold_)
    rate = detector.threshold.rate if detector.threshold is not None else detector.hyper.target_rate
    return alarm_threshold(alarm, float(detector.threshold_), rate)
