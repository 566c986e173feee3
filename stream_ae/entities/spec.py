"""What a feature schema declares about entities: which one an event belongs to, and the
per-entity aggregates that become features.

In the schema file (YAML or JSON, frozen into the model's manifest)::

    entity:
      field: card            # omit for the Kafka record key
      ttl: 7d                # an entity idle this long starts afresh (and its state expires)
      max_entities: 1000000  # per input partition; the least recently seen are evicted beyond
      features:
        - count: [10m, 1h, 24h]              # events in each window (decayed, see below)
        - sum: amount                        # sum of a numeric field in each window
          windows: [1h, 24h]
        - zscore: amount                     # deviation from the entity's own EWMA
          half_life: 1d
          min_history: 5
          log: true                          # of log1p(amount): heavy-tailed fields
        - since_last                         # seconds since the entity's previous event
        - novelty: country                   # 1 when the value is not among its last 16
          capacity: 16
        - delta_mean: [cpu, mem]             # the row minus the mean of its previous rows
          rows: 10
        - spread: [cpu]                      # the standard deviation of its previous rows
          rows: 12
        - delta_mean: [requests]             # log: true on delta_mean, spread or seasonal:
          log: true                          # of the signed log1p (metrics that move by factors)
        - repeats: [cpu]                     # how many of its previous rows repeat the latest
          rows: 12                           # (a stuck metric)
        - seasonal: [cpu]                    # the row minus the entity's mean one period ago
          period: 1d                         # (same hour-of-day bucket, yesterday)
          buckets: 24
      alarm:                 # optional: the post-score stage (stream_ae.entities.alarm)
        likelihood: true     # alarm on the score likelihood, not the raw score
        short: 3             # raw scores in the short-term mean
        half_life: 500       # events: the memory of the entity's long-term score distribution
        warmup: 100          # an entity's first events never alarm
        cooldown: 1h         # alarms this close to the entity's previous one join its incident
        calibrated: false    # true: raw scores as normal quantiles of the calibration distribution

Durations are seconds, or a number with ``s``, ``m``, ``h`` or ``d``. Each aggregate adds
numeric features named after it (:meth:`EntitySpec.feature_names`, prefix ``entity.``), which
the feature encoder scales like any numeric field.

Example:
    >>> spec = EntitySpec.from_dict({"field": "card", "features": [{"count": ["10m", "1h"]}, "since_last"]})
    >>> spec.feature_names()
    ['entity.count_10m', 'entity.count_1h', 'entity.since_last_s']
    >>> EntitySpec.from_dict(spec.to_dict()) == spec
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["count", "sum", "zscore", "since_last", "novelty", "delta_mean", "spread", "repeats", "seasonal"]
KINDS: tuple[str, ...] = (
    "count",
    "sum",
    "zscore",
    "since_last",
    "novelty",
    "delta_mean",
    "spread",
    "repeats",
    "seasonal",
)
RECENT_ROWS = ("delta_mean", "spread", "repeats")  # the kinds that keep a ring of the entity's last rows
LOG_KINDS = ("zscore", "delta_mean", "spread", "seasonal")  # the kinds with a log option
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PREFIX = "entity."
OPTIONS = {
    "kind", "field", "fields", "windows", "half_life", "min_history", "capacity", "rows", "log", "period", "buckets"
}  # fmt: skip


def seconds(value: Any) -> float:
    """``600``, ``"600"``, ``"10m"``, ``"1h"``, ``"7d"`` -> seconds (positive)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        out = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(value))
        if m is None:
            raise ValueError(f"not a duration: {value!r} (seconds, or a number with s, m, h or d)")
        out = float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)
    if not out > 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return out


def label(secs: float) -> str:
    """The shortest exact label of a duration: 600 -> ``10m``, 86400 -> ``1d``, 90 -> ``90s``."""
    for unit in ("d", "h", "m"):
        n = secs / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{secs:g}s"


@dataclass(frozen=True)
class Aggregate:
    """One declared per-entity aggregate (see the module docstring for each kind)."""

    kind: Kind
    field: str | None = None  # sum, zscore, novelty
    fields: tuple[str, ...] = ()  # delta_mean, spread, repeats, seasonal
    windows: tuple[float, ...] = ()  # count, sum (seconds)
    half_life: float = 86_400.0  # zscore (seconds)
    min_history: int = 5  # zscore
    capacity: int = 16  # novelty
    rows: int = 10  # delta_mean, spread, repeats
    # zscore, delta_mean, spread, seasonal: of the signed log1p of the value (heavy-tailed
    # fields, and metrics that move by factors: counts, rates, latencies, bytes)
    log: bool = False
    period: float = 86_400.0  # seasonal (seconds)
    buckets: int = 24  # seasonal: time-of-period buckets

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown entity feature {self.kind!r}; choose one of {', '.join(KINDS)}")
        needs_field = self.kind in ("sum", "zscore", "novelty")
        if needs_field and not self.field:
            raise ValueError(f"entity feature {self.kind!r} needs a field")
        if self.kind in ("count", "sum") and not self.windows:
            raise ValueError(f"entity feature {self.kind!r} needs windows")
        if self.kind in RECENT_ROWS and (not self.fields or self.rows < 1):
            raise ValueError(f"entity feature {self.kind!r} needs fields and rows >= 1")
        if self.kind == "seasonal" and (not self.fields or not 1 <= self.buckets <= 1024 or self.period <= 0):
            raise ValueError("entity feature 'seasonal' needs fields, a positive period and 1..1024 buckets")
        if self.kind == "novelty" and not 1 <= self.capacity <= 256:
            raise ValueError("novelty capacity must lie in 1..256")
        if self.kind == "zscore" and (self.half_life <= 0 or self.min_history < 1):
            raise ValueError("zscore needs a positive half_life and min_history >= 1")
        if self.log and self.kind not in LOG_KINDS:
            raise ValueError(f"log is an option of {', '.join(LOG_KINDS)} only")

    def feature_names(self) -> list[str]:
        k = self.kind
        if k == "count":
            return [f"{PREFIX}count_{label(w)}" for w in self.windows]
        if k == "sum":
            return [f"{PREFIX}{self.field}_sum_{label(w)}" for w in self.windows]
        if k == "zscore":
            return [f"{PREFIX}{self.field}_z"]
        if k == "since_last":
            return [f"{PREFIX}since_last_s"]
        if k == "novelty":
            return [f"{PREFIX}{self.field}_new"]
        log = "_log" if self.log else ""  # the features are in log units: their names say so
        if k == "spread":
            return [f"{PREFIX}{f}{log}_sd{self.rows}" for f in self.fields]
        if k == "repeats":
            return [f"{PREFIX}{f}_repeats{self.rows}" for f in self.fields]
        if k == "seasonal":
            return [f"{PREFIX}{f}{log}_season{label(self.period)}" for f in self.fields]
        return [f"{PREFIX}{f}{log}_delta{self.rows}" for f in self.fields]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("sum", "zscore", "novelty"):
            out["field"] = self.field
        if self.kind in ("count", "sum"):
            out["windows"] = list(self.windows)
        if self.kind == "zscore":
            out.update(half_life=self.half_life, min_history=self.min_history)
        if self.log:  # only when set: a declaration without it keeps its fingerprint
            out["log"] = True
        if self.kind == "novelty":
            out["capacity"] = self.capacity
        if self.kind in RECENT_ROWS:
            out.update(fields=list(self.fields), rows=self.rows)
        if self.kind == "seasonal":
            out.update(fields=list(self.fields), period=float(self.period), buckets=int(self.buckets))
        return out

    @classmethod
    def from_dict(cls, item: str | Mapping[str, Any]) -> Aggregate:
        """The explicit form (``{"kind": "sum", "field": ..., ...}``) or the short one of the
        module docstring (``{"sum": "amount", "windows": [...]}``, ``"since_last"``)."""
        if isinstance(item, str):
            return cls(kind=item)  # type: ignore[arg-type]
        data = dict(item)
        if "kind" not in data:
            kinds = [k for k in data if k in KINDS]
            if len(kinds) != 1:
                raise ValueError(f"an entity feature names one kind of {', '.join(KINDS)}: {item!r}")
            kind = kinds[0]
            value = data.pop(kind)
            data["kind"] = kind
            if kind == "count":
                data["windows"] = value
            elif kind in (*RECENT_ROWS, "seasonal"):
                data["fields"] = [value] if isinstance(value, str) else value
            elif value is not None and kind != "since_last":
                data["field"] = value
        unknown = set(data) - OPTIONS
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} in entity feature {item!r}")
        if "windows" in data:
            data["windows"] = tuple(seconds(w) for w in data["windows"])
        if "half_life" in data:
            data["half_life"] = seconds(data["half_life"])
        if "period" in data:
            data["period"] = seconds(data["period"])
        if "fields" in data:
            data["fields"] = tuple(data["fields"])
        return cls(**data)


CLIP_DEFAULT = 5.0


@dataclass(frozen=True)
class AlarmSpec:
    """How an entity's scored events become alarms and incidents (the post-score stage,
    :mod:`stream_ae.entities.alarm`). ``cooldown`` None: no incidents."""

    likelihood: bool = True
    short: int = 3  # a mean of more lags and dilutes a spike: NAB rewards the earliest detection
    half_life: float = 500.0  # events
    warmup: int = 100  # events
    cooldown: float | None = None  # seconds
    # the likelihood on the raw scores as normal quantiles of the model's calibration
    # distribution: alarms near the target rate, but fewer faults found (docs/design/metric-streams.md)
    calibrated: bool = False
    # the baseline learns each deviation up to this many of its standard deviations (0: no limit):
    # one extreme score cannot deafen the entity for half-lives (docs/design/metric-streams.md)
    clip: float = CLIP_DEFAULT

    def __post_init__(self) -> None:
        if not self.clip >= 0:
            raise ValueError("alarm: clip is a number of standard deviations, >= 0 (0: no limit)")
        if not 1 <= self.short <= 1000:
            raise ValueError("alarm: short must lie in 1..1000")
        if not self.half_life >= 1:
            raise ValueError("alarm: half_life is a number of events, at least 1")
        if self.warmup < 0:
            raise ValueError("alarm: warmup must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {  # typed, so that the fingerprint does not depend on 5 versus 5.0
            "likelihood": bool(self.likelihood),
            "short": int(self.short),
            "half_life": float(self.half_life),
            "warmup": int(self.warmup),
            "cooldown": float(self.cooldown) if self.cooldown is not None else None,
            # only when set: a declaration without it keeps the fingerprint it had before it existed
            **({"calibrated": True} if self.calibrated else {}),
            # only when not the default: the baseline's state means the same with any clip
            **({"clip": float(self.clip)} if self.clip != CLIP_DEFAULT else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlarmSpec:
        unknown = set(data) - {"likelihood", "short", "half_life", "warmup", "cooldown", "calibrated", "clip"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} in the alarm declaration")
        cooldown = data.get("cooldown")
        return cls(
            likelihood=bool(data.get("likelihood", True)),
            short=int(data.get("short", 3)),
            half_life=float(data.get("half_life", 500.0)),
            warmup=int(data.get("warmup", 100)),
            cooldown=seconds(cooldown) if cooldown is not None else None,
            calibrated=bool(data.get("calibrated", False)),
            clip=float(data.get("clip", CLIP_DEFAULT)),
        )


@dataclass(frozen=True)
class EntitySpec:
    """The entity an event belongs to and the aggregates computed over its history."""

    field: str | None = None  # None: the Kafka record key
    ttl: float = 7 * 86_400.0
    max_entities: int = 1_000_000  # per input partition
    aggregates: tuple[Aggregate, ...] = ()
    alarm: AlarmSpec | None = None

    def __post_init__(self) -> None:
        if not self.aggregates:
            raise ValueError("an entity declaration needs at least one feature")
        if self.alarm is not None and self.alarm.cooldown is not None and self.alarm.cooldown > self.ttl:
            raise ValueError("alarm: the cooldown cannot be longer than the entity's ttl")
        if self.max_entities < 1:
            raise ValueError("max_entities must be at least 1")
        names = self.feature_names()
        if len(set(names)) != len(names):
            raise ValueError(f"entity features repeat a name: {names}")

    def feature_names(self) -> list[str]:
        return [name for agg in self.aggregates for name in agg.feature_names()]

    def numeric_fields(self) -> list[str]:
        """The event fields read as numbers (sum, zscore, delta_mean, spread, seasonal), in first-use order."""
        out: dict[str, None] = {}
        for agg in self.aggregates:
            if agg.kind in ("sum", "zscore") and agg.field:
                out[agg.field] = None
            out.update(dict.fromkeys(agg.fields))
        return list(out)

    def category_fields(self) -> list[str]:
        """The event fields whose values novelty tracks."""
        return list(dict.fromkeys(agg.field for agg in self.aggregates if agg.kind == "novelty" and agg.field))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "field": self.field,
            "ttl": self.ttl,
            "max_entities": self.max_entities,
            "features": [a.to_dict() for a in self.aggregates],
        }
        if self.alarm is not None:  # absent otherwise: older declarations keep their fingerprint
            out["alarm"] = self.alarm.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntitySpec:
        unknown = set(data) - {"field", "ttl", "max_entities", "features", "alarm"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} in the entity declaration")
        return cls(
            field=data.get("field"),
            ttl=seconds(data.get("ttl", 7 * 86_400.0)),
            max_entities=int(data.get("max_entities", 1_000_000)),
            aggregates=tuple(Aggregate.from_dict(a) for a in data.get("features") or ()),
            alarm=AlarmSpec.from_dict(data["alarm"]) if data.get("alarm") is not None else None,
        )

    def fingerprint(self) -> bytes:
        """8 bytes that change whenever the state layout or its meaning does (changelog records
        written under another declaration are not read back)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).digest()[:8]
