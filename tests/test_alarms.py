"""The post-score stage: score likelihood, warm-up and incidents per entity, as entity state.

The vectorised batch function is checked against a plain event-by-event reference of the
documented semantics, through the entity store, in batches of any split; then what a user
sees: a quiet entity's jump alarms and a noisy one's does not, a lasting change becomes the
new normal, a constant stream stays quiet, a new entity does not alarm in its warm-up, an
entity back after a gap longer than its ttl starts afresh.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stream_ae.entities.alarm import CAP, judge_one, opening_alarms
from stream_ae.entities.changelog import decode_latest, encode
from stream_ae.entities.spec import AlarmSpec, EntitySpec
from stream_ae.entities.step import EntityBatch
from stream_ae.entities.store import EntityStore
from stream_ae.entities.table import NO_TIME


def reference(spec: AlarmSpec, ttl_ms: int, keys: list[bytes], times: list[int], raw: list[float], threshold: float):
    """The module docstring's semantics, one event at a time."""
    state: dict[bytes, dict] = {}
    out = []
    half = 1.0 - 0.5 ** (1.0 / spec.half_life)
    for key, t, r in zip(keys, times, raw, strict=True):
        st = state.get(key)
        if st is None:
            st = state[key] = {"T": t, "seen": 0, "ring": [], "mean": 0.0, "var": 0.0, "last": None, "inc": None}
        elif max(t, st["T"]) - st["T"] > ttl_ms:
            st.update(seen=0, ring=[], mean=0.0, var=0.0)
        st["T"] = T = max(t, st["T"])
        st["seen"] += 1
        st["ring"] = (st["ring"] + [r])[-spec.short :]
        s = sum(st["ring"]) / len(st["ring"])
        published = 0.0
        if st["seen"] == 1:
            st["mean"], st["var"] = s, 0.0
            if not spec.likelihood:
                published = r
        else:
            if spec.likelihood:
                z = (s - st["mean"]) / math.sqrt(max(st["var"], 1e-12))
                tail = 0.5 * math.erfc(z / math.sqrt(2.0))
                published = min(CAP, -math.log10(max(tail, 10.0**-CAP))) if st["seen"] > spec.warmup else 0.0
            else:
                published = r
            alpha = max(half, 1.0 / st["seen"])
            d = s - st["mean"]
            st["mean"] += alpha * d
            st["var"] = (1 - alpha) * (st["var"] + alpha * d * d)
        alarm = st["seen"] > spec.warmup and published > threshold
        opens, incident = False, NO_TIME
        if alarm and spec.cooldown is not None:
            if st["last"] is None or T - st["last"] > spec.cooldown * 1000:
                opens, st["inc"] = True, T
            incident = st["inc"]
        if alarm:
            st["last"] = T
        out.append((published, alarm, opens, incident))
    return out


def through_store(spec: EntitySpec, keys, times, raw, threshold, splits, restore_at=None):
    """The store's process-then-judge, batch by batch; with ``restore_at`` the state is
    rebuilt from the changelog records after that batch, as a restarted worker would."""
    store = EntityStore(spec)
    log: dict[bytes, bytes | None] = {}
    out = []
    bounds = [0, *splits, len(keys)]
    for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        batch = EntityBatch(keys[lo:hi], np.asarray(times[lo:hi]), np.arange(lo, hi), {}, {})
        _, delta = store.process(0, batch)
        judged = store.judge(batch, np.asarray(raw[lo:hi]), threshold, delta)
        k, v = encode(spec, store.dtype, delta)
        log.update(zip(k, v, strict=True))
        if restore_at == b:
            restored = EntityStore(spec)
            restored.load(0, *decode_latest(spec, store.dtype, log, committed=hi))
            store = restored
        out += list(zip(judged.published, judged.alarm, judged.opens, judged.incident_ms, strict=True))
    return out


def events(seed: int, n: int = 3000, entities: int = 7):
    rng = np.random.default_rng(seed)
    keys = [f"e{i}".encode() for i in rng.integers(0, entities, n)]
    step = rng.choice([1000, 50_000, 400_000], n, p=[0.947, 0.05, 0.003])  # a few gaps beyond the ttl
    times = np.cumsum(step)
    late = rng.random(n) < 0.05
    times[late] -= 5000  # a few late events
    level = {k: rng.uniform(0.5, 3.0) for k in set(keys)}
    raw = [level[k] * rng.gamma(4.0, 0.25) + (6.0 if rng.random() < 0.01 else 0.0) for k in keys]
    return keys, times.tolist(), raw


@pytest.mark.parametrize("likelihood", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_batch_function_is_the_event_by_event_semantics_in_any_split(seed: int, likelihood: bool) -> None:
    alarm = AlarmSpec(likelihood=likelihood, short=5, half_life=50, warmup=20, cooldown=30)
    spec = EntitySpec.from_dict({"ttl": 300, "features": ["since_last"]})
    spec = EntitySpec(spec.field, spec.ttl, spec.max_entities, spec.aggregates, alarm)
    keys, times, raw = events(seed)
    threshold = 3.0 if likelihood else 2.5
    want = reference(alarm, 300_000, keys, times, raw, threshold)
    rng = np.random.default_rng(seed + 10)
    for splits, restore_at in (([], None), (sorted(rng.choice(3000, 40, replace=False).tolist()), 7)):
        got = through_store(spec, keys, times, raw, threshold, splits, restore_at)
        np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-7, atol=1e-9)
        assert [bool(g[1]) for g in got] == [w[1] for w in want]
        assert [bool(g[2]) for g in got] == [w[2] for w in want]
        assert [int(g[3]) for g in got] == [w[3] for w in want]
    assert sum(w[2] for w in want) >= 5, "the data open incidents"


def test_a_jump_alarms_for_a_quiet_entity_not_for_a_noisy_one() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(301) * 1000
    quiet = judge_one(AlarmSpec(), np.r_[rng.normal(1.0, 0.05, 300), 2.0], t, threshold=3.0)[0]
    noisy = judge_one(AlarmSpec(), np.r_[rng.normal(1.0, 1.0, 300), 2.0], t, threshold=3.0)[0]
    assert quiet.published[-1] > 3 and quiet.alarm[-1]
    assert noisy.published[-1] < 1 and not noisy.alarm[-1]


def test_a_lasting_change_alarms_then_becomes_the_new_normal() -> None:
    rng = np.random.default_rng(1)
    raw = np.r_[rng.normal(1.0, 0.1, 2000), rng.normal(3.0, 0.1, 4000)]
    published = judge_one(AlarmSpec(half_life=300), raw, np.arange(6000) * 1000, threshold=3.0)[0].published
    assert published[:100].max() == 0.0 and published[100] > 0, "no verdict during the warm-up"
    assert np.quantile(published[200:2000], 0.99) < 3.0
    assert published[2000:2015].max() >= 5.0, "the step is a rare excursion for this entity"
    assert np.median(published[-1000:]) < 1.0, "after a few half-lives the new level is ordinary"


def test_a_constant_stream_never_alarms() -> None:
    judged = judge_one(AlarmSpec(), np.full(1000, 4.2), np.arange(1000) * 1000, threshold=3.0)[0]
    assert judged.published.max() < 1.0 and not judged.alarm.any()


def test_raw_scores_alarm_only_after_the_warm_up() -> None:
    raw = np.full(50, 9.0)
    judged = judge_one(AlarmSpec(likelihood=False, warmup=10), raw, np.arange(50) * 1000, threshold=5.0)[0]
    assert np.flatnonzero(judged.alarm).tolist() == list(range(10, 50))


def test_an_entity_back_after_its_ttl_starts_afresh_with_a_new_warm_up() -> None:
    alarm = AlarmSpec(likelihood=False, warmup=5, cooldown=60)
    base = EntitySpec.from_dict({"ttl": "1h", "features": ["since_last"]})
    spec = EntitySpec(base.field, base.ttl, base.max_entities, base.aggregates, alarm)
    times = np.r_[np.arange(10) * 1000, 10 * 3_600_000 + np.arange(10) * 1000]
    got = through_store(spec, [b"h"] * 20, times.tolist(), [9.0] * 20, 5.0, [10])
    alarms = [bool(g[1]) for g in got]
    assert alarms == [False] * 5 + [True] * 5 + [False] * 5 + [True] * 5
    assert [bool(g[2]) for g in got].count(True) == 2, "each return opens its own incident"


def test_alarms_within_the_cooldown_join_the_open_incident() -> None:
    flags = np.zeros(100, dtype=bool)
    flags[[10, 12, 20, 40, 41, 90]] = True
    assert np.flatnonzero(opening_alarms(flags, cooldown=8)).tolist() == [10, 40, 90]


def test_the_declaration_round_trips_with_one_fingerprint() -> None:
    """The worker reads the declaration back from the manifest: its changelog fingerprint
    must be the one the offline tools compute (5 and 5.0 are the same half-life)."""
    base = EntitySpec.from_dict({"features": ["since_last"], "alarm": {"half_life": 5, "cooldown": "1h"}})
    spec = EntitySpec(base.field, base.ttl, base.max_entities, base.aggregates, AlarmSpec(half_life=5, cooldown=3600))
    assert EntitySpec.from_dict(spec.to_dict()).fingerprint() == spec.fingerprint() == base.fingerprint()
    assert base.alarm == AlarmSpec(half_life=5.0, cooldown=3600.0)


def test_the_published_score_does_not_depend_on_the_unit_of_the_raw_score() -> None:
    """The stage holds raw scores in units of the model's raw threshold; a refreshed model with
    scores twice as large continues each entity's history instead of alarming on the jump."""
    raw = np.random.default_rng(4).gamma(3.0, 1.0, 800)
    t = np.arange(800) * 1000
    a = judge_one(AlarmSpec(), raw, t, threshold=3.0)[0].published
    b = judge_one(AlarmSpec(), raw * 7.5, t, threshold=3.0)[0].published
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
