"""Entity features: the batch function against a plain per-event reference, batch-split
invariance, the declaration's syntax, TTL and bounded memory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stream_ae.entities.spec import EntitySpec, seconds
from stream_ae.entities.step import EntityBatch, step
from stream_ae.entities.table import EntityTable, row_dtype

SPEC = EntitySpec.from_dict(
    {
        "ttl": "2h",
        "features": [
            {"count": ["10m", "1h"]},
            {"sum": "amount", "windows": ["1h"]},
            {"zscore": "amount", "half_life": "30m", "min_history": 3},
            "since_last",
            {"novelty": "country", "capacity": 4},
            {"delta_mean": ["amount", "level"], "rows": 3},
            {"spread": ["level"], "rows": 4},
            {"seasonal": ["amount", "level"], "period": "1h", "buckets": 6},
        ],
    }
)


SPEC_DTYPE = row_dtype(SPEC)


def reference(spec: EntitySpec, events: list[dict[str, Any]]) -> np.ndarray:
    """The documented semantics, one event at a time, in plain Python."""
    ttl = spec.ttl * 1000
    state: dict[str, dict[str, Any]] = {}
    out = []
    for e in events:
        s = state.get(e["key"])
        t = e["t"]
        fresh = s is None or max(t, s["T"]) - s["T"] > ttl
        if fresh:
            s = {"T": t, "n": 0, "c": {}, "w": 0.0, "m": 0.0, "v": 0.0, "codes": [], "rows": [], "season": {}}
            dt = None
        else:
            assert s is not None
            dt = max(t, s["T"]) - s["T"]
        T = t if fresh else max(t, s["T"])
        row: list[float] = []
        for w in (600.0, 3600.0):  # counts
            row.append(0.0 if fresh else s["c"].get(("count", w), 0.0) * math.exp(-dt / (w * 1000)))
        row.append(0.0 if fresh else s["c"].get(("sum", 3600.0), 0.0) * math.exp(-dt / 3_600_000))
        x = e["amount"]
        if not fresh and s["n"] >= 3 and s["w"] > 0 and not math.isnan(x):
            sd = max(math.sqrt(max(s["v"], 0.0)), 0.01 * abs(s["m"]) + 1e-6)
            row.append(max(-1000.0, min(1000.0, (x - s["m"]) / sd)))
        else:
            row.append(0.0)
        row.append(spec.ttl if fresh else dt / 1000)
        code = e["country"]
        row.append(float(code != 0 and code not in s["codes"]))
        for j, f in enumerate(("amount", "level")):
            past = [r[j] for r in s["rows"][-3:] if not math.isnan(r[j])]
            row.append(e[f] - sum(past) / len(past) if past and not math.isnan(e[f]) else 0.0)
        past = [r[1] for r in s["rows"][-4:] if not math.isnan(r[1])]  # spread of level, 4 rows
        mean = sum(past) / len(past) if past else 0.0
        row.append(math.sqrt(sum((p - mean) ** 2 for p in past) / len(past)) if len(past) > 1 else 0.0)
        bucket = T // 600_000  # seasonal: 10-minute buckets of a 1-hour period
        ago = s["season"].get(bucket - 6)
        for j, f in enumerate(("amount", "level")):
            ok = ago is not None and ago[2 * j + 1] > 0 and not math.isnan(e[f])
            row.append(e[f] - ago[2 * j] / ago[2 * j + 1] if ok else 0.0)  # type: ignore[index]
        out.append(row)
        # update
        if not fresh:
            for k in list(s["c"]):
                s["c"][k] *= math.exp(-dt / (k[1] * 1000))
            d = 0.5 ** (dt / (1800 * 1000))
        else:
            d = 0.0
        s["c"][("count", 600.0)] = s["c"].get(("count", 600.0), 0.0) + 1
        s["c"][("count", 3600.0)] = s["c"].get(("count", 3600.0), 0.0) + 1
        s["c"][("sum", 3600.0)] = s["c"].get(("sum", 3600.0), 0.0) + (0.0 if math.isnan(x) else x)
        if not math.isnan(x):
            w = s["w"] * d
            m, v = s["m"], s["v"]
            w_new = w + 1
            m_new = m + (x - m) / w_new
            v_new = (w * (v + (m - m_new) ** 2) + (x - m_new) ** 2) / w_new
            s["w"], s["m"], s["v"] = w_new, m_new, v_new
        else:
            s["w"] *= d
        s["codes"] = ([*s["codes"], code])[-4:]
        s["rows"] = ([*s["rows"], (e["amount"], e["level"])])[-4:]
        acc = s["season"].setdefault(bucket, [0.0, 0.0, 0.0, 0.0])
        for j, f in enumerate(("amount", "level")):
            if not math.isnan(e[f]):
                acc[2 * j] += e[f]
                acc[2 * j + 1] += 1
        s["T"], s["n"] = T, s["n"] + 1
        state[e["key"]] = s
    return np.asarray(out)


def stream(n: int, seed: int, entities: int = 12) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(40_000, n)).astype(np.int64) + 1_790_000_000_000
    late = rng.random(n) < 0.05  # out-of-order events
    t[late] -= rng.integers(1, 600_000, late.sum())
    gap = rng.random(n) < 0.01  # an idle stretch longer than the TTL
    t += np.cumsum(gap) * 3 * 3_600_000
    amount = rng.lognormal(3, 1, n)
    amount[rng.random(n) < 0.03] = np.nan
    return [
        {
            "key": f"e{rng.integers(entities)}",
            "t": int(t[i]),
            "amount": float(amount[i]),
            "level": float(rng.normal()),
            "country": int(rng.integers(1, 6)) if rng.random() > 0.05 else 0,
        }
        for i in range(n)
    ]


def as_batch(events: list[dict[str, Any]], first_offset: int) -> EntityBatch:
    return EntityBatch(
        [e["key"].encode() for e in events],
        np.asarray([e["t"] for e in events], dtype=np.int64),
        np.arange(first_offset, first_offset + len(events), dtype=np.int64),
        {"amount": np.asarray([e["amount"] for e in events]), "level": np.asarray([e["level"] for e in events])},
        {"country": np.asarray([e["country"] for e in events], dtype=np.uint32)},
    )


def replay(spec: EntitySpec, events: list[dict[str, Any]], batch_size: int) -> tuple[np.ndarray, EntityTable]:
    """The worker's use: apply each micro-batch's new rows to the table."""
    table = EntityTable(row_dtype(spec))
    out = []
    for i in range(0, len(events), batch_size):
        result = step(spec, table, as_batch(events[i : i + batch_size], i))
        slots = table.lookup(result.keys)
        new = slots < 0
        slots[new] = table.insert([k for k, n in zip(result.keys, new, strict=True) if n])
        table.rows[slots] = result.rows
        out.append(result.features)
    return np.vstack(out), table


def test_the_batch_function_follows_the_documented_per_event_semantics() -> None:
    events = stream(1500, seed=0)
    expected = reference(SPEC, events)
    got, _ = replay(SPEC, events, 2048)
    assert got.shape == expected.shape == (1500, len(SPEC.feature_names()))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_features_do_not_depend_on_where_batches_split(batch_size: int) -> None:
    events = stream(1200, seed=1, entities=5)  # long groups: the scan takes many steps
    whole, table = replay(SPEC, events, 2048)
    split, split_table = replay(SPEC, events, batch_size)
    np.testing.assert_allclose(split, whole, rtol=1e-12, atol=1e-12)
    novelty = [i for i, name in enumerate(SPEC.feature_names()) if name.endswith("_new")]
    assert np.array_equal(split[:, novelty], whole[:, novelty]), "rings are exact"
    for key, slot in table.index.items():
        mine, theirs = table.rows[slot], split_table.rows[split_table.index[key]]
        for name in table.dtype.names or ():
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-12, atol=1e-9, err_msg=name)


def test_partitions_stepped_together_equal_partitions_stepped_one_by_one() -> None:
    """A worker reading many partitions steps them in one pass: the same features, new rows
    and changes as one partition at a time, with the same keys in two partitions kept apart
    (an entity's state is its partition's), one partition a day behind the others, and a
    re-delivered batch."""
    from stream_ae.entities.store import EntityStore

    per_part = {p: stream(900, seed=10 + p, entities=6) for p in range(3)}
    for e in per_part[2]:
        e["t"] -= 86_400_000  # a partition replaying yesterday
    together, alone = EntityStore(SPEC), EntityStore(SPEC)
    for i in [*range(0, 900, 150), 300]:  # the last: offsets 300-449 again
        batches = [(p, as_batch(per_part[p][i : i + 150], i)) for p in range(3)]
        got = together.process_partitions(batches)
        for (p, batch), (features, delta) in zip(batches, got, strict=True):
            want_features, want_delta = alone.process(p, batch)
            np.testing.assert_allclose(features, want_features, rtol=1e-12, atol=1e-12)
            assert delta.keys == want_delta.keys
            for name in SPEC_DTYPE.names or ():
                np.testing.assert_array_equal(delta.post[name], want_delta.post[name], err_msg=name)
                np.testing.assert_array_equal(delta.pre[name], want_delta.pre[name], err_msg=name)
            assert np.array_equal(delta.replayed, want_delta.replayed)
    assert together.held() == alone.held() == {0: 6, 1: 6, 2: 6}
    assert delta.replayed.any(), "the last batch was a re-delivery (of entities still held)"


def test_a_redelivered_event_is_not_counted_twice() -> None:
    spec = EntitySpec.from_dict({"features": [{"count": ["1h"]}]})
    events = [
        {"key": "a", "t": 1_790_000_000_000 + i * 1000, "amount": 1.0, "level": 0.0, "country": 1} for i in range(6)
    ]
    table = EntityTable(row_dtype(spec))
    first = step(spec, table, as_batch(events, 0))
    table.rows[table.insert(first.keys)] = first.rows
    again = step(spec, table, as_batch(events[3:], 3))  # offsets 3..5 re-delivered
    assert again.n_replayed == 3 and again.keys == []
    assert table.rows["counts"][0, 0] == first.rows["counts"][0, 0], "nothing applied twice"


def test_the_declaration_reads_the_short_and_the_explicit_form() -> None:
    short = EntitySpec.from_dict({"field": "card", "ttl": "7d", "features": [{"sum": "amount", "windows": ["1h"]}]})
    explicit = EntitySpec.from_dict(
        {"field": "card", "ttl": 604800, "features": [{"kind": "sum", "field": "amount", "windows": [3600]}]}
    )
    assert short == explicit and short.feature_names() == ["entity.amount_sum_1h"]
    assert seconds("1.5h") == 5400 and seconds(90) == 90
    for bad in ({"features": []}, {"features": ["velocity"]}, {"features": [{"sum": "amount"}]}, {"ttl": "soon"}):
        with pytest.raises(ValueError):
            EntitySpec.from_dict({"features": ["since_last"], **bad})


def test_idle_entities_expire_with_tombstones_and_come_back_new() -> None:
    from stream_ae.entities.store import EntityStore

    spec = EntitySpec.from_dict({"ttl": "1h", "features": [{"count": ["10m"]}, "since_last"]})
    store = EntityStore(spec)
    t0 = 1_790_000_000_000

    def batch(keys: list[bytes], t: int, first: int) -> EntityBatch:
        n = len(keys)
        return EntityBatch(keys, np.full(n, t, dtype=np.int64), np.arange(first, first + n), {}, {})

    store.process(0, batch([b"old", b"busy"], t0, 0))
    _, delta = store.process(0, batch([b"busy"], t0 + 2 * 3_600_000, 2))  # two hours on: "old" is past its TTL
    assert b"old" not in store.tables[0].index and store.take_counts().evicted == {"ttl": 1}
    gone = delta.keys.index(b"old")
    assert delta.pre_held[gone] and not delta.post_held[gone], "a tombstone for the changelog"
    store.undo([delta])
    assert b"old" in store.tables[0].index, "a rewound batch puts the expired entity back"
    features, _ = store.process(0, batch([b"old"], t0 + 2 * 3_600_000, 3))
    assert features[0, 1] == spec.ttl, "an entity back after its TTL is new, held or not"


@pytest.mark.parametrize("batch_size", [7, 50])
def test_coalesced_changelog_restores_what_the_per_batch_records_restore(batch_size: int) -> None:
    """The worker writes one changelog record per entity per commit interval, not per batch.
    Restored at the offset committed before the interval, the coalesced records give the state
    as it was then; at the offset committed after it, the state the batches left (entities
    expired by the TTL on the way, and ones that came back, included)."""
    from stream_ae.entities import changelog
    from stream_ae.entities.store import EntityStore

    events = stream(600, seed=4)
    store = EntityStore(SPEC)
    cut = 200  # the interval starts with offset 200 committed
    for i in range(0, cut, batch_size):
        store.process(0, as_batch(events[i : min(i + batch_size, cut)], i))
    before = {k: store.tables[0].rows[s].copy() for k, s in store.tables[0].index.items()}
    deltas = []
    for i in range(cut, len(events), batch_size):
        deltas.append(store.process(0, as_batch(events[i : i + batch_size], i))[1])
    after = {k: store.tables[0].rows[s].copy() for k, s in store.tables[0].index.items()}
    assert sum(len(d) for d in deltas) > len(changelog.coalesce(deltas)[0]), "entities touched twice merge"

    def restore(ds: list[Any], committed: int) -> dict[bytes, Any]:
        latest: dict[bytes, bytes | None] = {}
        for d in ds:
            latest.update(zip(*changelog.encode(SPEC, store.dtype, d), strict=True))
        keys, rows = changelog.decode_latest(SPEC, store.dtype, latest, committed)
        return dict(zip(keys, rows, strict=True))

    got = restore(changelog.coalesce(deltas), len(events))
    per_batch = restore(deltas, len(events))
    assert set(got) == set(per_batch) == set(after)
    assert all(got[k].tobytes() == per_batch[k].tobytes() == after[k].tobytes() for k in got)
    # committed before the interval (the worker died before committing it): the entities the
    # interval touched come back as they were, and the batches are read and applied again
    # (an entity the TTL dropped leaves a tombstone, as a per-batch record does: the batches
    # read again drop it again, and an entity back after its TTL is new anyway)
    [merged] = changelog.coalesce(deltas)
    dropped = {k for k, held in zip(merged.keys, merged.post_held.tolist(), strict=True) if not held}
    assert dropped and not dropped & set(after)
    got = restore([merged], cut)
    assert set(got) == {k for k in before if k in set(merged.keys) - dropped}
    assert all(got[k].tobytes() == before[k].tobytes() for k in got)


def test_changelog_records_leave_out_the_row_a_new_entity_never_had() -> None:
    """A record of an entity new to its batch carries no before row (the changelog of a stream
    of new cards is 44 % smaller); restored at either offset it gives what the full record
    gives, in a chunk mixing both layouts; and records written by the previous version (both
    rows always) are still read."""
    from stream_ae.entities import changelog
    from stream_ae.entities.store import EntityStore

    events = stream(300, seed=6)
    store = EntityStore(SPEC)
    store.process(0, as_batch(events[:150], 0))
    _, delta = store.process(0, as_batch(events[150:], 150))
    keys, values = changelog.encode(SPEC, store.dtype, delta)
    full = changelog.record_dtype(store.dtype).itemsize
    sizes = {k: len(v) for k, v in zip(keys, values, strict=True) if v is not None}
    new = [k for k, held in zip(delta.keys, delta.pre_held.tolist(), strict=True) if not held]
    assert new and len(new) < len(sizes), "the second batch holds new entities and known ones"
    assert {sizes[k] for k in new} == {full - store.dtype.itemsize}
    assert {sizes[k] for k in sizes if k not in new} == {full}

    # the same delta in the previous version's layout: every record full, version 1
    recs = np.zeros(len(delta), dtype=changelog.record_dtype(store.dtype))
    recs["magic"], recs["version"], recs["fingerprint"] = changelog.MAGIC, 1, SPEC.fingerprint()
    recs["flags"] = np.where(delta.pre_held, changelog.PRE, 0) | np.where(delta.post_held, changelog.POST, 0)
    recs["first_offset"], recs["last_offset"] = delta.first_offsets, delta.last_offsets
    recs["pre"], recs["post"] = delta.pre, delta.post
    old = {
        k: r.tobytes() if held else None for k, r, held in zip(delta.keys, recs, delta.post_held.tolist(), strict=True)
    }
    for committed in (150, len(events)):  # before the batch: known entities as they were, new ones absent
        now = changelog.decode_latest(SPEC, store.dtype, dict(zip(keys, values, strict=True)), committed)
        then = changelog.decode_latest(SPEC, store.dtype, old, committed)
        assert now[0] == then[0] and now[1].tobytes() == then[1].tobytes()
        assert (set(now[0]) & set(new)) == (set() if committed == 150 else set(new) & set(sizes))


def test_repeats_counts_how_long_a_metric_has_been_stuck() -> None:
    """``repeats`` against a plain per-event reference (values on a coarse grid, so that runs
    happen by chance, missing values, idle gaps past the TTL), in any batch split; and the
    case it is for: a stuck metric's next rows read 1, 2, ... once two rows are stuck."""
    spec = EntitySpec.from_dict({"ttl": "2h", "features": [{"repeats": ["level"], "rows": 5}]})
    events = stream(800, seed=9, entities=5)
    rng = np.random.default_rng(3)
    for e in events:
        e["level"] = float(rng.integers(0, 2)) if rng.random() > 0.05 else math.nan

    rows: dict[str, list[float]] = {}
    last_t: dict[str, int] = {}
    want = []
    for e in events:
        key = e["key"]
        if key not in last_t or max(e["t"], last_t[key]) - last_t[key] > spec.ttl * 1000:
            rows[key] = []  # new, or back after its TTL: no history
        past = rows[key][-5:]
        k = 0
        while len(past) >= k + 2 and not math.isnan(past[-1]) and past[-2 - k] == past[-1]:
            k += 1
        want.append(float(k))
        rows[key].append(e["level"])
        last_t[key] = max(e["t"], last_t.get(key, e["t"]))
    assert max(want) == 4.0 and min(want) == 0.0, "the stream exercises the whole range"
    for batch_size in (1, 7, 64, 800):
        got, _ = replay(spec, events, batch_size)
        np.testing.assert_array_equal(got[:, 0], want)

    stuck = [
        {"key": "h", "t": 1_790_000_000_000 + i * 300_000, "level": v}
        for i, v in enumerate([1.0, 2.0, 3.0] + [7.0] * 6)
    ]
    for e in stuck:
        e.update(amount=1.0, country=1)
    got, _ = replay(spec, stuck, 4)
    assert got[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4]  # the row after k stuck rows reads k - 1


def test_log_measures_delta_mean_spread_and_seasonal_on_the_signed_log1p() -> None:
    """``log: true`` on the row-window and seasonal features: the same features as on the
    signed log1p of the field, named ``<field>_log_...``; a declaration without it keeps its
    fingerprint; ``repeats`` (an equality) refuses it."""
    plain = [{"delta_mean": ["amount"], "rows": 4}, {"spread": ["amount"], "rows": 4}, {"seasonal": ["amount"]}]
    logged = [{**f, "log": True} for f in plain]
    spec_log = EntitySpec.from_dict({"ttl": "2h", "features": logged})
    spec_plain = EntitySpec.from_dict({"ttl": "2h", "features": plain})
    assert spec_log.feature_names() == [
        "entity.amount_log_delta4", "entity.amount_log_sd4", "entity.amount_log_season1d"
    ]  # fmt: skip
    events = stream(600, seed=4)
    on_log = [{**e, "amount": float(np.sign(e["amount"]) * np.log1p(abs(e["amount"])))} for e in events]
    np.testing.assert_allclose(replay(spec_log, events, 64)[0], replay(spec_plain, on_log, 64)[0], rtol=1e-12)
    assert not np.allclose(replay(spec_log, events, 64)[0], replay(spec_plain, events, 64)[0], equal_nan=True)
    assert "log" not in str(spec_plain.to_dict()), "older declarations keep their fingerprint"
    assert EntitySpec.from_dict(spec_log.to_dict()) == spec_log
    with pytest.raises(ValueError, match="log is an option of"):
        EntitySpec.from_dict({"features": [{"repeats": ["amount"], "log": True}]})
