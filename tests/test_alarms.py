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


def reference(
    spec: AlarmSpec,
    ttl_ms: int,
    keys: list[bytes],
    times: list[int],
    raw: list[float],
    threshold: float,
    with_closures: bool = False,
):
    """The module docstring's semantics, one event at a time; each alarm's incident tally so
    far; with ``with_closures`` also the incidents closed (entity, opened, closed at, alarms,
    peak) by the entity's first event after the cooldown, and the incidents still open."""
    state: dict[bytes, dict] = {}
    closures: set[tuple[bytes, int, int, int, float]] = set()
    out = []
    half = 1.0 - 0.5 ** (1.0 / spec.half_life)
    for key, t, r in zip(keys, times, raw, strict=True):
        st = state.get(key)
        if st is None:
            st = state[key] = {"T": t, "seen": 0, "ring": [], "mean": 0.0, "var": 0.0, "last": None, "inc": None}
            st.update(count=0, peak=0.0, closed=False)
        elif max(t, st["T"]) - st["T"] > ttl_ms:
            st.update(seen=0, ring=[], mean=0.0, var=0.0)
        T = max(t, st["T"])
        if (
            spec.cooldown is not None and st["inc"] is not None and not st["closed"]
            and T - st["last"] > spec.cooldown * 1000
        ):  # fmt: skip
            st["closed"] = True
            closures.add((key, st["inc"], st["last"] + round(spec.cooldown * 1000), st["count"], round(st["peak"], 6)))
        st["T"] = T
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
            if spec.clip > 0 and st["seen"] > spec.warmup and st["var"] > 0:  # what the baseline learns
                lim = spec.clip * math.sqrt(st["var"])
                d = min(max(d, -lim), lim)
            st["mean"] += alpha * d
            st["var"] = (1 - alpha) * (st["var"] + alpha * d * d)
        alarm = st["seen"] > spec.warmup and published > threshold
        opens, incident = False, NO_TIME
        if alarm and spec.cooldown is not None:
            if st["last"] is None or T - st["last"] > spec.cooldown * 1000:
                opens, st["inc"] = True, T
                st.update(count=0, peak=published, closed=False)
            incident = st["inc"]
            st["count"] += 1
            st["peak"] = max(st["peak"], published)
        if alarm:
            st["last"] = T
        tally = (st["count"], st["peak"]) if incident != NO_TIME else (0, 0.0)
        out.append((published, alarm, opens, incident, *tally))
    if with_closures:
        still_open = {(k, st["inc"]) for k, st in state.items() if st["inc"] is not None and not st["closed"]}
        return out, closures, still_open
    return out


def through_store(spec: EntitySpec, keys, times, raw, threshold, splits, restore_at=None, with_closures=False):
    """The store's process-then-judge, batch by batch; with ``restore_at`` the state is
    rebuilt from the changelog records after that batch, as a restarted worker would."""
    store = EntityStore(spec)
    log: dict[bytes, bytes | None] = {}
    out = []
    closures: list[tuple] = []
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
        out += list(
            zip(
                judged.published, judged.alarm, judged.opens, judged.incident_ms, judged.incident_alarms,
                judged.incident_peak, strict=True,
            )
        )  # fmt: skip
        for c in judged.closures:
            key = c.key if c.key is not None else keys[lo + c.row]
            closures.append((key, c.opened_ms, c.closed_ms, c.alarms, round(c.peak, 6), c.expired))
    return (out, closures) if with_closures else out


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


@pytest.mark.parametrize(("clip", "warmup"), [(5.0, 20), (0.0, 20), (5.0, 0)])
@pytest.mark.parametrize("likelihood", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_batch_function_is_the_event_by_event_semantics_in_any_split(
    seed: int, likelihood: bool, clip: float, warmup: int
) -> None:
    alarm = AlarmSpec(likelihood=likelihood, short=5, half_life=50, warmup=warmup, cooldown=30, clip=clip)
    spec = EntitySpec.from_dict({"ttl": 300, "features": ["since_last"]})
    spec = EntitySpec(spec.field, spec.ttl, spec.max_entities, spec.aggregates, alarm)
    keys, times, raw = events(seed)
    threshold = 3.0 if likelihood else 2.5
    want, closed, still_open = reference(alarm, 300_000, keys, times, raw, threshold, with_closures=True)
    rng = np.random.default_rng(seed + 10)
    for splits, restore_at in (([], None), (sorted(rng.choice(3000, 40, replace=False).tolist()), 7)):
        got, got_closed = through_store(spec, keys, times, raw, threshold, splits, restore_at, with_closures=True)
        np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-7, atol=1e-9)
        assert [bool(g[1]) for g in got] == [w[1] for w in want]
        assert [bool(g[2]) for g in got] == [w[2] for w in want]
        assert [int(g[3]) for g in got] == [w[3] for w in want]
        assert [int(g[4]) for g in got] == [w[4] for w in want], "each alarm's incident tally"
        np.testing.assert_allclose([g[5] for g in got], [w[5] for w in want], rtol=1e-7, atol=1e-9)
        # each incident closes once: at its entity's first event after the cooldown, or when
        # the entity's state expires first (then the same closing; never for one that is open)
        as_found = [c[:5] for c in got_closed]
        assert len(as_found) == len(set(as_found)), "closed once"
        assert closed <= set(as_found)
        assert all(c[5] and (c[0], c[1]) in still_open for c in got_closed if c[:5] not in closed)
    assert sum(w[2] for w in want) >= 5 and len(closed) >= 5, "the data open and close incidents"


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


@pytest.mark.parametrize("clip", [5.0, 0.0])
def test_one_extreme_score_does_not_deafen_the_entity(clip: float) -> None:
    """A quiet entity scores one event a thousand times its usual level (a stuck reading, a
    glitch), then, two hundred events later, a fault twice its level. With the baseline's
    deviations clipped (the default) the fault still alarms; learnt unclipped, the one score
    had widened the entity's variance so far that the fault reads as ordinary."""
    rng = np.random.default_rng(3)
    raw = rng.normal(1.0, 0.05, 700)
    raw[300] = 1000.0
    raw[500:503] = 2.0
    judged = judge_one(AlarmSpec(half_life=2000, clip=clip), raw, np.arange(700) * 1000, threshold=3.0)[0]
    assert judged.alarm[300], "the extreme score alarms either way"
    if clip:
        assert judged.alarm[500:503].any(), "the later fault alarms"
        assert not judged.alarm[310:500].any() and not judged.alarm[510:].any(), "and nothing else does"
    else:
        assert not judged.alarm[500:503].any(), "unclipped, the entity was deaf to it"


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
    assert "calibrated" not in AlarmSpec().to_dict(), "declarations from before the option keep their fingerprint"
    calibrated = AlarmSpec.from_dict({"calibrated": True})
    assert calibrated.calibrated and AlarmSpec.from_dict(calibrated.to_dict()) == calibrated


def test_the_published_score_does_not_depend_on_the_unit_of_the_raw_score() -> None:
    """The likelihood is the same for raw scores 7.5 times as large: a refreshed model with
    another scale continues each entity's history instead of alarming on the jump."""
    raw = np.random.default_rng(4).gamma(3.0, 1.0, 800)
    t = np.arange(800) * 1000
    a = judge_one(AlarmSpec(), raw, t, threshold=3.0)[0].published
    b = judge_one(AlarmSpec(), raw * 7.5, t, threshold=3.0)[0].published
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def _host_spec(ttl: str, cooldown: float) -> EntitySpec:
    base = EntitySpec.from_dict({"ttl": ttl, "features": ["since_last"]})
    return EntitySpec(
        base.field,
        base.ttl,
        base.max_entities,
        base.aggregates,
        AlarmSpec(likelihood=False, warmup=0, cooldown=cooldown),
    )


def _through_stage(spec: EntitySpec, keys: list[bytes], times: list[int], raw: list[float], splits: list[int]):
    """The stage's incident changes, batch by batch, as the worker writes them."""
    from stream_ae.alarms.stage import Alarms
    from stream_ae.features.featurize import EntityRows

    store, changes = EntityStore(spec), []
    for lo, hi in itertools.pairwise([0, *splits, len(keys)]):
        batch = EntityBatch(keys[lo:hi], np.asarray(times[lo:hi]), np.arange(lo, hi), {}, {})
        _, delta = store.process(0, batch)
        judged = store.judge(batch, np.asarray(raw[lo:hi]), 5.0, delta)
        n = hi - lo
        alarms = Alarms(
            judged, 5.0, spec.alarm.cooldown, [EntityRows(0, np.arange(n), batch)], np.zeros(n, np.int64), np.arange(n)
        )
        changes += [(c.incident_id, c.status, c.event_ms, c.alarms, c.peak_score, lo + c.row) for c in alarms.changes()]
    return changes


def test_an_incident_opens_is_updated_once_per_batch_and_closes_at_the_first_event_after_its_cooldown() -> None:
    """What the incidents topic gets: the opening, one update per batch that adds alarms (the
    tally so far), and the closing at the host's first event a cooldown after its latest alarm."""
    spec = _host_spec("1d", cooldown=60)
    times = [0, 1000, 2000, 3000, 4000] + [10_000 * k for k in range(1, 11)]
    raw = [9.0, 7.0, 8.0, 12.0, 6.0] + [1.0] * 10
    one = _through_stage(spec, [b"h"] * 15, times, raw, [])
    assert one == [
        ("h@0", "opened", 0, 1, 9.0, 0),
        ("h@0", "closed", 64_000, 5, 12.0, 11),  # at the event at 70 s; the closing carries the tally
    ], "an update that the same batch's closing supersedes is not written"
    split = _through_stage(spec, [b"h"] * 15, times, raw, [2, 4, 9])
    assert [c[1:] for c in split] == [
        ("opened", 0, 1, 9.0, 0),
        ("updated", 1000, 2, 9.0, 1),
        ("updated", 3000, 4, 12.0, 3),
        ("updated", 4000, 5, 12.0, 4),
        ("closed", 64_000, 5, 12.0, 11),
    ], "one update per batch that adds alarms; the closing is the same whatever the split"


def test_an_incident_of_a_host_that_goes_silent_closes_when_its_state_expires() -> None:
    spec = _host_spec("5m", cooldown=60)
    keys = [b"a", b"a"] + [b"b"] * 40
    times = [0, 1000] + [10_000 * k for k in range(1, 41)]  # b's clock runs on; a's state expires
    raw = [9.0, 9.0] + [1.0] * 40
    changes = _through_stage(spec, keys, times, raw, [10, 20, 30])
    assert [c[:5] for c in changes] == [
        ("a@0", "opened", 0, 1, 9.0),
        ("a@0", "updated", 1000, 2, 9.0),
        ("a@0", "closed", 61_000, 2, 9.0),
    ]
    assert changes[-1][5] >= 31, "found once the partition's time passed a's ttl"


@pytest.mark.parametrize("tail", ["lognormal", "exponential", "normal"])
def test_the_likelihood_alarms_at_the_target_rate_whatever_the_raw_scores_tail(tail: str) -> None:
    """With ``calibrated``, raw scores enter as normal quantiles of the model's calibration
    distribution (:meth:`Threshold.normal_scores`), and the likelihood alarms at the target
    rate. In raw units (the default) a heavy-tailed score (a model's usual shape) alarms at
    10-17 times the target rate, since the likelihood's Gaussian tail is too thin for it."""
    from stream_ae.scoring.threshold import Threshold

    rng = np.random.default_rng(0)
    draw = {
        "lognormal": lambda n: rng.lognormal(0.0, 1.0, n),
        "exponential": lambda n: rng.exponential(1.0, n),
        "normal": lambda n: rng.normal(0.0, 1.0, n),
    }[tail]
    calibration = Threshold.fit(draw(12_000), 0.001)
    live = draw(100_000)
    t = np.arange(len(live)) * 1000
    rate = judge_one(AlarmSpec(short=3), calibration.normal_scores(live), t, threshold=3.0)[0].alarm.mean()
    as_raw = judge_one(AlarmSpec(short=3), live / calibration.value, t, threshold=3.0)[0].alarm.mean()
    print(f"\n[likelihood] {tail}: alarm rate {rate:.5f} at a target of 0.001 (on raw scores {as_raw:.5f})")
    assert 0.0005 <= rate <= 0.002
    if tail != "normal":
        assert as_raw >= 0.005, "the thin Gaussian tail on heavy-tailed raw scores"
