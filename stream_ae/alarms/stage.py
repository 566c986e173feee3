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

__all__ = ["Alarms", "alarm_threshold", "incident_id", "judge_rows", "model_alarm_threshold"]


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

    def incident(self, row: int) -> str | None:
        """The id of the incident row ``row``'s alarm belongs to (None: no alarm, or no incidents)."""
        at = int(self.judged.incident_ms[row])
        return incident_id(self.entity(row), at) if at != NO_TIME else None


def incident_id(entity: str, opened_ms: int) -> str:
    """``<entity>@<opening event time, epoch ms>``: the same in the worker and offline."""
    return f"{entity}@{opened_ms}"


def judge_rows(feats: Featurized, raw: NDArray[np.float64], detector: AutoencoderDetector) -> Alarms:
    """The post-score stage on a featurized batch whose rows ``detector`` scored ``raw``.

    With ``likelihood`` the entity state holds the raw scores in units of the model's
    calibrated raw threshold: the published score does not depend on the unit, and a refreshed
    model (another scale of raw scores) continues each entity's history where the old one left
    it instead of starting an alarm storm."""
    store = feats.store
    if store is None or store.spec.alarm is None:
        raise ValueError("the schema declares no alarm section (entity: alarm:)")
    alarm = store.spec.alarm
    threshold = model_alarm_threshold(detector, alarm)
    unit = float(detector.threshold_) if alarm.likelihood and detector.threshold_ > 0 else 1.0
    n = len(raw)
    out = Judged(np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.full(n, NO_TIME, dtype=np.int64))
    group_of = np.zeros(n, dtype=np.int64)
    position = np.zeros(n, dtype=np.int64)
    values = np.asarray(raw, dtype=np.float64) / unit
    for gi, (group, delta) in enumerate(zip(feats.groups, feats.deltas, strict=True)):
        judged = store.judge(group.events, values[group.rows], threshold, delta)
        rows = group.rows
        out.published[rows], out.alarm[rows], out.opens[rows] = judged.published, judged.alarm, judged.opens
        out.incident_ms[rows] = judged.incident_ms
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
