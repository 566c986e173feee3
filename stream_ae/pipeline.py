"""The hot path without Kafka: raw records in, output records (per topic, as bytes) out.

One way through, one module a step::

    decode (stream_ae.decode) -> encode features (stream_ae.features)
        -> score on the device (stream_ae.scorer) -> route (stream_ae.route)

Every input record ends up in exactly one of: scored (and maybe an anomaly) or dead-lettered
with a reason. The worker only moves bytes between Kafka and :func:`process_batch`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from stream_ae.artifacts import LoadedModel
from stream_ae.decode import RawRecord, decode_batch
from stream_ae.features import FeatureEncoder
from stream_ae.route import Routed, Router, Topics
from stream_ae.scorer import DeviceScorer

__all__ = ["ActiveModel", "RawRecord", "Routed", "Topics", "process_batch"]


class ActiveModel:
    """A loaded artifact ready for the hot path: encoder, device scorer, names, version."""

    def __init__(self, loaded: LoadedModel, top_k: int) -> None:
        if loaded.encoder is None:
            raise ValueError("a streaming model needs a feature encoder in its artifact")
        self.loaded = loaded
        self.encoder: FeatureEncoder = loaded.encoder
        self.scorer = DeviceScorer(loaded.detector, top_k)
        self.feature_names = list(loaded.manifest.get("feature_names") or self.encoder.feature_names)
        self.version = loaded.version
        self.threshold = self.scorer.threshold


def process_batch(records: Sequence[RawRecord], model: ActiveModel, topics: Topics, max_message_bytes: int) -> Routed:
    """Route one micro-batch. Never raises for bad input: bad records become dead letters."""
    router = Router(topics, len(records))
    decoded = decode_batch(records, max_message_bytes)
    for rec, reason, detail in decoded.rejects:
        router.dead_letter(rec, reason, detail)
    routed = router.routed
    if not decoded.events:
        return routed
    kept, events = decoded.records, decoded.events
    batch = model.encoder.encode(events)
    for i, err in batch.errors.items():
        router.dead_letter(kept[i], f"schema_{err.reason}", str(err))
    t0 = time.perf_counter()
    result = model.scorer.score(batch.X)
    routed.score_seconds = time.perf_counter() - t0
    routed.n_scored = len(batch.ok)
    routed.scores = result.scores
    id_field = model.encoder.schema.id_field
    anomaly_times: list[float] = []
    for j in np.flatnonzero(result.flagged).tolist():
        i = int(batch.ok[j])
        rec, event = kept[i], events[i]
        top = [
            {"feature": model.feature_names[f], "share": round(float(s), 4)}
            for f, s in zip(result.top_index[j], result.top_share[j], strict=True)
            if f >= 0
        ]
        event_id = event.get(id_field) if id_field else None
        published = router.anomaly(
            rec,
            event,
            event_id=str(event_id) if event_id is not None else f"{rec.topic}:{rec.partition}:{rec.offset}",
            event_time=rec.timestamp / 1000.0,
            score=float(result.scores[j]),
            threshold=model.threshold,
            model_version=model.version,
            top_features=top,
        )
        if published:
            anomaly_times.append(rec.timestamp / 1000.0)
    routed.n_anomalies = len(anomaly_times)
    routed.event_times = np.asarray(anomaly_times)
    scored = kept if len(batch.ok) == len(kept) else [kept[i] for i in batch.ok.tolist()]
    router.scores(scored, result.scores, model.version)
    return routed
