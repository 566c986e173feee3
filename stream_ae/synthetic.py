"""Synthetic, labelled event streams made by the project itself (demo, tests, benchmarks).

``transactions`` are card payments: the amount depends on the merchant category, the
distance from home on whether the card was present, activity follows the time of day, and
the number of recent transactions is small. Injected frauds break those relations (very large
online amounts abroad, card-present payments thousands of kilometres away, bursts of
transactions, night-time travel spending). Labels are returned beside the events, never
inside them.

Example:
    >>> events, labels = transactions(1000, seed=0, anomaly_rate=0.02)
    >>> len(events), int(labels.sum()) > 0, sorted(events[0])[:3]
    (1000, True, ['amount', 'card_present', 'country'])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

CATEGORIES = np.array(["grocery", "fuel", "online", "restaurant", "travel"])
CATEGORY_P = np.array([0.35, 0.15, 0.25, 0.2, 0.05])
LOG_AMOUNT = np.array([3.3, 4.0, 3.6, 3.0, 5.5])  # log-euro mean by category
COUNTRIES = np.array(["DE", "FR", "NL", "AT", "US", "BR", "NG"])
HOME_P = np.array([0.9, 0.04, 0.03, 0.03, 0.0, 0.0, 0.0])


def transactions(
    n: int,
    *,
    seed: int = 0,
    anomaly_rate: float = 0.0,
    start_ts: float = 1_763_900_000.0,
    amount_shift: float = 0.0,
    id_prefix: str = "tx",
) -> tuple[list[dict[str, Any]], NDArray[np.int8]]:
    """``n`` card transactions, a fraction ``anomaly_rate`` of them fraudulent.

    ``amount_shift`` moves every log-amount (a drift of normal traffic for retrain tests).
    """
    rng = np.random.default_rng(seed)
    cat = rng.choice(len(CATEGORIES), size=n, p=CATEGORY_P)
    online = CATEGORIES[cat] == "online"
    card_present = ~online & (rng.random(n) < 0.97)
    amount = np.exp(LOG_AMOUNT[cat] + amount_shift + 0.45 * rng.normal(size=n))
    country = rng.choice(len(COUNTRIES), size=n, p=HOME_P)
    distance = np.where(card_present, np.exp(1.5 + 0.8 * rng.normal(size=n)), 0.0)
    distance += (country > 0) * card_present * rng.uniform(300, 900, size=n)
    hour = np.clip(rng.normal(14, 3.5, size=n), 0, 23.99)
    day = rng.integers(0, 7, size=n)
    ts = start_ts - (start_ts % 86400) + day * 86400 + hour * 3600
    velocity = rng.poisson(1.0, size=n)
    labels = (rng.random(n) < anomaly_rate).astype(np.int8)
    kind = rng.integers(0, 4, size=n)
    a = labels == 1
    # 0: huge online amount abroad
    k0 = a & (kind == 0)
    online |= k0
    card_present &= ~k0
    amount[k0] = np.exp(rng.uniform(7.5, 9.0, k0.sum()))
    country[k0] = rng.integers(4, 7, k0.sum())
    distance[k0] = 0.0
    # 1: card present far away (cloned card)
    k1 = a & (kind == 1)
    card_present |= k1
    distance[k1] = rng.uniform(4000, 9000, k1.sum())
    country[k1] = rng.integers(4, 7, k1.sum())
    # 2: burst of transactions
    k2 = a & (kind == 2)
    velocity[k2] = rng.integers(25, 60, k2.sum())
    amount[k2] = np.exp(rng.uniform(5.5, 6.5, k2.sum()))
    # 3: night-time travel spending of unusual size
    k3 = a & (kind == 3)
    cat[k3] = 4
    hour[k3] = rng.uniform(2, 4.5, k3.sum())
    amount[k3] = np.exp(rng.uniform(8.0, 9.0, k3.sum()))
    ts = start_ts - (start_ts % 86400) + day * 86400 + hour * 3600
    events = [
        {
            "id": f"{id_prefix}-{seed}-{i}",
            "amount": round(float(amount[i]), 2),
            "merchant_category": str(CATEGORIES[cat[i]]),
            "country": str(COUNTRIES[country[i]]),
            "card_present": bool(card_present[i]),
            "distance_km": round(float(distance[i]), 1),
            "tx_last_hour": int(velocity[i]),
            "ts": round(float(ts[i]), 3),
        }
        for i in range(n)
    ]
    return events, labels
