"""Synthetic, labelled card payments made by the project itself (demo, tests, benchmarks).

:class:`CardStream` is a time-ordered stream of payments by a pool of cards. Each card has a
home country and an activity level; a payment's amount depends on its merchant category,
its distance from home on whether the card was present, and activity follows the time of
day (a simulated clock: ``events_per_day`` payments a day). Injected frauds break those
relations:

0. a very large online amount abroad;
1. a card-present payment thousands of kilometres away (a cloned card);
2. a burst: 6-12 ordinary-looking online payments on one card within two minutes, which
   only the card's own recent history tells apart (``entity.count_10m``, ``since_last``);
3. night-time travel spending of an unusual size (stamped 02:00-04:30 of its day, so it
   arrives late: the stream is time-ordered but for these).

Nothing in an event says how busy its card has been: velocity is for the model to derive from
the stream (the entity features of :data:`CARD_SCHEMA`). Labels are returned beside the
events, never inside them; :attr:`CardStream.kinds` says which fraud each label is.

Example:
    >>> events, labels = transactions(1000, seed=0, anomaly_rate=0.02)
    >>> len(events), int(labels.sum()) > 0, sorted(events[0])
    (1000, True, ['amount', 'card', 'card_present', 'country', 'distance_km', 'id', 'merchant_category', 'ts'])
    >>> normal, _ = transactions(1000, seed=0)
    >>> all(a["ts"] <= b["ts"] for a, b in zip(normal, normal[1:]))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import EntitySpec
from stream_ae.features.encoder import FeatureSchema, FieldKind, FieldSpec

CATEGORIES = np.array(["grocery", "fuel", "online", "restaurant", "travel"])
CATEGORY_P = np.array([0.35, 0.15, 0.25, 0.2, 0.05])
LOG_AMOUNT = np.array([3.3, 4.0, 3.6, 3.0, 5.5])  # log-euro mean by category
COUNTRIES = np.array(["DE", "FR", "NL", "AT", "US", "BR", "NG"])
HOME_P = np.array([0.9, 0.04, 0.03, 0.03])  # cards are issued in the first four
FRAUD_KINDS = ("huge_online_abroad", "cloned_card_far_away", "burst", "night_travel")
BURST_SIZE = (6, 12)
BURST_SECONDS = 120.0

# The card stream's declared features: the payment's own fields, and the card's history.
CARD_FIELDS = (
    FieldSpec("amount", FieldKind.NUMERIC, log=True),
    FieldSpec("merchant_category", FieldKind.CATEGORICAL),
    FieldSpec("country", FieldKind.CATEGORICAL),
    FieldSpec("card_present", FieldKind.BOOLEAN),
    FieldSpec("distance_km", FieldKind.NUMERIC, log=True),
    FieldSpec("ts", FieldKind.TIMESTAMP),
)
# Velocity (payments in the last 10 minutes, time since the card's last payment) and first use
# of a country by the card. Chosen on this stream, by burst recall against the other frauds'
# (docs/concepts/entity-features.md): the amount's z-score against the card's own history drowned
# the bursts (a card's amounts mix categories, so its normal z-scores run past 3), and counts
# over several windows repeat one signal, which lifts the normal tail of the score.
CARD_ENTITY = EntitySpec.from_dict(
    {
        "field": "card",
        "ttl": "7d",
        "features": [{"count": ["10m"]}, "since_last", {"novelty": "country", "capacity": 16}],
    }
)
CARD_SCHEMA = FeatureSchema(CARD_FIELDS, id_field="id", time_field="ts", entity=CARD_ENTITY)
CARD_SCHEMA_STATELESS = FeatureSchema(CARD_FIELDS, id_field="id", time_field="ts")  # the ablation's


class CardStream:
    """An endless, time-ordered stream of card payments; :meth:`next` continues it."""

    def __init__(
        self,
        *,
        seed: int = 0,
        anomaly_rate: float = 0.0,
        cards: int = 2000,
        events_per_day: int = 2_500,
        start_ts: float = 1_763_900_000.0,
        amount_shift: float = 0.0,
        id_prefix: str = "tx",
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.anomaly_rate = anomaly_rate
        self.events_per_day = events_per_day
        self.amount_shift = amount_shift
        self.id_prefix = id_prefix
        self.home = self.rng.choice(4, size=cards, p=HOME_P)
        activity = self.rng.lognormal(0.0, 0.5, size=cards)
        self.card_p = activity / activity.sum()
        self.day = int(start_ts // 86400)
        self._left_today = np.zeros(0)  # hours of the current day not emitted yet
        self._overdrawn = 0  # fraud payments the last burst took beyond its block's budget
        self.emitted = 0
        self.kinds: NDArray[np.int8] = np.zeros(0, dtype=np.int8)  # of the last block: -1 normal, else FRAUD_KINDS

    def _times(self, n: int) -> NDArray[np.float64]:
        """The next ``n`` payment times: each simulated day's hours drawn around 14:00, sorted."""
        out: list[NDArray[np.float64]] = []
        while n > 0:
            if not len(self._left_today):
                hours = np.sort(np.clip(self.rng.normal(14, 3.5, self.events_per_day), 0, 23.999))
                self._left_today = self.day * 86400.0 + hours * 3600.0
                self.day += 1
            take, self._left_today = self._left_today[:n], self._left_today[n:]
            out.append(take)
            n -= len(take)
        return np.concatenate(out) if out else np.zeros(0)

    def next(self, n: int) -> tuple[list[dict[str, Any]], NDArray[np.int8]]:
        """The next ``n`` payments and their labels (1 = fraud)."""
        rng = self.rng
        # the block's share of frauds, less what earlier blocks' bursts overdrew: a burst keeps its
        # drawn size whatever the block's budget, so the fraud mix does not depend on how the
        # stream is cut into blocks (truncating bursts to the budget made blocks of 2,000 hold
        # shorter, harder bursts than one long call, and the demo's recall 0.81 against 0.85)
        budget = (int(rng.binomial(n, self.anomaly_rate)) if self.anomaly_rate else 0) - self._overdrawn
        singles: list[int] = []
        bursts: list[int] = []  # sizes
        while budget > 0:
            which = int(rng.integers(0, 4))
            if which == 2:
                bursts.append(min(int(rng.integers(BURST_SIZE[0], BURST_SIZE[1] + 1)), n - len(singles) - sum(bursts)))
                budget -= bursts[-1]
            else:
                singles.append(which)
                budget -= 1
        self._overdrawn = max(0, -budget)
        n_burst = sum(bursts)
        t = self._times(n - n_burst)
        card = rng.choice(len(self.card_p), size=len(t), p=self.card_p)
        kind = np.full(len(t), -1, dtype=np.int8)
        if singles:
            kind[rng.choice(len(t), size=len(singles), replace=False)] = singles
        if bursts:  # each burst: one card, a run of payments within two minutes of the stream's clock
            lo, hi = (float(t.min()), float(t.max())) if len(t) else (self.day * 86400.0, self.day * 86400.0)
            starts = rng.uniform(lo, max(lo, hi - BURST_SECONDS), len(bursts))
            bt = [at + np.sort(rng.uniform(0, BURST_SECONDS, size)) for at, size in zip(starts, bursts, strict=True)]
            bc = [np.full(size, rng.integers(len(self.card_p))) for size in bursts]
            t = np.concatenate([t, *bt])
            card = np.concatenate([card, *bc])
            kind = np.concatenate([kind, np.full(n_burst, 2, dtype=np.int8)])
            order = np.argsort(t, kind="stable")
            t, card, kind = t[order], card[order], kind[order]
        return self._payments(t, card, kind)

    def _payments(
        self, t: NDArray[np.float64], card: NDArray[np.int64], kind: NDArray[np.int8]
    ) -> tuple[list[dict[str, Any]], NDArray[np.int8]]:
        rng, n = self.rng, len(t)
        cat = rng.choice(len(CATEGORIES), size=n, p=CATEGORY_P)
        abroad = rng.random(n) < 0.03  # legitimate travel: another of the four home countries
        country = np.where(abroad, (self.home[card] + rng.integers(1, 4, n)) % 4, self.home[card])
        online = CATEGORIES[cat] == "online"
        card_present = ~online & (rng.random(n) < 0.97)
        amount = np.exp(LOG_AMOUNT[cat] + self.amount_shift + 0.45 * rng.normal(size=n))
        distance = np.where(card_present, np.exp(1.5 + 0.8 * rng.normal(size=n)), 0.0)
        distance += abroad * card_present * rng.uniform(300, 900, size=n)
        # 0: huge online amount abroad
        k = kind == 0
        cat[k] = 2
        card_present[k] = False
        amount[k] = np.exp(rng.uniform(7.5, 9.0, k.sum()))
        country[k] = rng.integers(4, 7, k.sum())
        distance[k] = 0.0
        # 1: card present far away (a cloned card)
        k = kind == 1
        card_present[k] = True
        distance[k] = rng.uniform(4000, 9000, k.sum())
        country[k] = rng.integers(4, 7, k.sum())
        # 2: a burst of ordinary online payments (only the card's velocity tells)
        k = kind == 2
        cat[k] = 2
        card_present[k] = False
        distance[k] = 0.0
        country[k] = self.home[card[k]]
        # 3: night-time travel spending of an unusual size, stamped 02:00-04:30 of its day (a late event)
        k = kind == 3
        cat[k] = 4
        amount[k] = np.exp(rng.uniform(8.0, 9.0, k.sum()))
        t = t.copy()
        t[k] = (t[k] // 86400) * 86400 + rng.uniform(2, 4.5, k.sum()) * 3600
        base = self.emitted
        events = [
            {
                "id": f"{self.id_prefix}-{self.seed}-{base + i}",
                "card": f"card-{self.seed}-{int(card[i])}",
                "amount": round(float(amount[i]), 2),
                "merchant_category": str(CATEGORIES[cat[i]]),
                "country": str(COUNTRIES[country[i]]),
                "card_present": bool(card_present[i]),
                "distance_km": round(float(distance[i]), 1),
                "ts": round(float(t[i]), 3),
            }
            for i in range(n)
        ]
        self.emitted += n
        self.kinds = kind
        return events, (kind >= 0).astype(np.int8)


def transactions(
    n: int,
    *,
    seed: int = 0,
    anomaly_rate: float = 0.0,
    start_ts: float = 1_763_900_000.0,
    amount_shift: float = 0.0,
    id_prefix: str = "tx",
) -> tuple[list[dict[str, Any]], NDArray[np.int8]]:
    """``n`` payments from a fresh :class:`CardStream`, a fraction ``anomaly_rate`` of them
    fraudulent. ``amount_shift`` moves every log-amount (a drift of normal traffic)."""
    stream = CardStream(
        seed=seed, anomaly_rate=anomaly_rate, start_ts=start_ts, amount_shift=amount_shift, id_prefix=id_prefix
    )
    return stream.next(n)
