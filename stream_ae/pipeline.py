"""The hot path without Kafka: raw records in, output records (per topic, as bytes) out.

One way through, one module a step::

    decode (stream_ae.input.decode) -> features, with the entity state (stream_ae.features.featurize)
        -> score on the device (stream_ae.scoring.scorer)
        -> alarms: published score, warm-up, incidents, with the entity state (stream_ae.alarms)
        -> route (stream_ae.output.route)

Every input record ends up in exactly one of: scored (and maybe an anomaly) or dead-lettered
with a reason. The worker only moves bytes between Kafka and :func:`process_batch`.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.alarms.stage import Alarms, judge_rows, model_alarm_threshold
from stream_ae.entities.store import EntityStore
from stream_ae.features.encoder import FeatureEncoder
from stream_ae.features.featurize import RecordMeta, featurize
from stream_ae.input.decode import RawRecord, decode_batch
from stream_ae.lifecycle.artifacts import LoadedModel
from stream_ae.output.route import Routed, Router, Topics
from stream_ae.scoring.explain import FieldExplainer
from stream_ae.scoring.scorer import DeviceScorer

__all__ = ["ActiveModel", "RawRecord", "Routed", "Topics", "process_batch"]


class ActiveModel:
    """A loaded artifact ready for the hot path: encoder, device scorer, the explainer of
    flagged rows (by field, with expected values), version."""

    def __init__(self, loaded: LoadedModel, top_k: int, with_codes: bool = False) -> None:
        if loaded.encoder is None:
            raise ValueError("a streaming model needs a feature encoder in its artifact")
        self.loaded = loaded
        self.encoder: FeatureEncoder = loaded.encoder
        self.explainer = FieldExplainer(self.encoder)
        self.scorer = DeviceScorer(loaded.detector, top_k, groups=self.explainer.groups, with_codes=with_codes)
        self.version = loaded.version
        self.threshold = self.scorer.threshold
        self.entity = self.encoder.schema.entity
        self.alarm = self.entity.alarm if self.entity is not None else None
        # what an alarm is judged on: the published score's threshold with an alarm section
        self.alarm_threshold = model_alarm_threshold(loaded.detector, self.alarm)


_PARTITION, _OFFSET, _KEY, _TIMESTAMP = (operator.attrgetter(a) for a in ("partition", "offset", "key", "timestamp"))


def record_meta(records: Sequence[RawRecord]) -> RecordMeta:
    n = len(records)
    return RecordMeta(
        np.fromiter(map(_PARTITION, records), np.int64, count=n),
        np.fromiter(map(_OFFSET, records), np.int64, count=n),
        list(map(_KEY, records)),
        np.fromiter(map(_TIMESTAMP, records), np.int64, count=n),
    )


def process_batch(
    records: Sequence[RawRecord],
    model: ActiveModel,
    topics: Topics,
    max_message_bytes: int,
    entities: EntityStore | None = None,
) -> Routed:
    """Route one micro-batch. Never raises for bad input: bad records become dead letters.
    ``entities`` holds the entity state when the model declares entity features; it is
    updated, and ``Routed.deltas`` (and the changelog records) say how."""
    router = Router(topics, len(records))
    decoded = decode_batch(records, max_message_bytes)
    for rec, reason, detail in decoded.rejects:
        router.dead_letter(rec, reason, detail)
    routed = router.routed
    if not decoded.events:
        return routed
    kept, events = decoded.records, decoded.events
    check_key = model.entity is not None and model.entity.field is not None
    feats = featurize(model.encoder, events, record_meta(kept), entities, check_record_key=check_key)
    for i, (reason, detail) in sorted(feats.rejects.items()):
        router.dead_letter(kept[i], reason, detail)
    batch = feats.batch
    routed.deltas = feats.deltas
    alarms: Alarms | None = None

    def judge(raw: NDArray[np.float64]) -> NDArray[np.bool_]:
        nonlocal alarms
        alarms = judge_rows(feats, raw, model.loaded.detector)
        return alarms.judged.alarm

    t0 = time.perf_counter()
    result = model.scorer.score(batch.X, judge if model.alarm is not None and entities is not None else None)
    routed.score_seconds = time.perf_counter() - t0
    if entities is not None:  # after the post-score stage: the records carry its state too
        router.changelog(entities, feats.deltas)
        routed.entity_counts = entities.take_counts()
        routed.entities_held = entities.held()
    routed.n_scored = len(batch.ok)
    routed.scores = result.scores
    id_field = model.encoder.schema.id_field
    anomaly_times: list[float] = []
    top_of: dict[int, list[dict[str, Any]]] = {}  # flagged row -> its top fields (for the incident records)
    explained = result.explained_rows if result.explained_rows is not None else np.zeros(0, np.int64)
    for j in np.flatnonzero(result.flagged).tolist():
        i = int(batch.ok[j])
        rec, event = kept[i], events[i]
        at = int(np.searchsorted(explained, j))
        top = []
        if at < len(explained) and explained[at] == j and result.expected is not None:
            top = [
                model.explainer.entry(int(f), float(s), event, batch.X[j], result.expected[at, slot])
                for slot, (f, s) in enumerate(zip(result.top_index[j], result.top_share[j], strict=True))
                if f >= 0
            ]
        top_of[j] = top
        event_id = event.get(id_field) if id_field else None
        ident = str(event_id) if event_id is not None else f"{rec.topic}:{rec.partition}:{rec.offset}"
        raw = float(result.scores[j])
        score, incident = raw, None
        if alarms is not None:
            score, incident = float(alarms.judged.published[j]), alarms.incident(j)
        published = router.anomaly(
            rec,
            event,
            event_id=ident,
            event_time=rec.timestamp / 1000.0,
            score=score,
            threshold=model.alarm_threshold,
            model_version=model.version,
            top_features=top,
            raw_score=raw if alarms is not None else None,
            incident_id=incident,
        )
        if published:
            anomaly_times.append(rec.timestamp / 1000.0)
    if alarms is not None:
        for change in alarms.changes():
            j = change.row
            i = int(batch.ok[j])
            event_id = events[i].get(id_field) if id_field else None
            rec = kept[i]
            router.incident(
                rec,
                change,
                event_id=str(event_id) if event_id is not None else f"{rec.topic}:{rec.partition}:{rec.offset}",
                cooldown_s=alarms.cooldown_s,
                top_fields=top_of.get(j, []) if change.status != "closed" else [],
                score=float(alarms.judged.published[j]),
                raw_score=float(result.scores[j]),
                threshold=alarms.threshold,
                model_version=model.version,
            )
    routed.n_anomalies = len(anomaly_times)
    routed.event_times = np.asarray(anomaly_times)
    scored = kept if len(batch.ok) == len(kept) else [kept[i] for i in batch.ok.tolist()]
    router.scores(
        scored, result.scores, model.version, result.codes, alarms.judged.published if alarms is not None else None
    )
    return routed
