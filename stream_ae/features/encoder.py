"""Feature encoding: JSON-like events (dicts) to float32 matrices, column by column.

A :class:`FeatureSchema` declares the fields (``numeric``, ``categorical``, ``boolean``,
``timestamp``); it is written by hand (YAML/JSON) or inferred from a sample and then frozen.
:class:`FeatureEncoder` learns statistics at fit time and encodes whole batches:

* numeric: robust scaling ``(x - median) / IQR`` (after a signed ``log1p`` for heavy-tailed
  fields: inferred for non-negative fields whose 99th percentile exceeds 5 times the median);
* categorical: a learned vocabulary (most frequent values) plus an unknown bucket, one-hot;
  or a stable CRC32 hash into ``hash_buckets`` buckets for high cardinality;
* boolean: 0/1;
* timestamp (epoch seconds or milliseconds, or ISO-8601; a date-time without an offset is
  UTC, never the host's zone): optional cyclic hour-of-day and,
  separately, day-of-week (``weekday``); fitting drops day-of-week when the training data
  spans less than a week, and hour-of-day too when it spans less than a day; inference
  recognises RFC 3339 strings, and epoch values under a time-like name, as timestamps
  (:func:`looks_like_time`) and makes the first one the ``time_field``;
* an optional field adds a ``<name>__missing`` indicator and is imputed (median / unknown).

Bad input never yields garbage: :meth:`FeatureEncoder.encode` returns the rows it could
encode plus a reason for every row it could not (the worker dead-letters those), and
:meth:`FeatureEncoder.transform` raises :class:`EncodeError` naming the field.

Example:
    >>> schema = FeatureSchema.infer([{"amount": 12.5, "country": "DE"}, {"amount": 3.0, "country": "FR"}])
    >>> enc = FeatureEncoder(schema).fit([{"amount": 12.5, "country": "DE"}, {"amount": 3.0, "country": "FR"}])
    >>> enc.transform([{"amount": 7.0, "country": "DE"}]).shape
    (1, 4)
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import EntitySpec
from stream_ae.transforms import signed_expm1, signed_log1p

Event = Mapping[str, Any]
log = logging.getLogger("stream_ae.features")
_NUMBER_TYPES = (int, float)
_MISSING = object()


class FieldKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"
    TIMESTAMP = "timestamp"


class EncodeError(ValueError):
    """An event cannot be encoded: ``field`` names the culprit, ``reason`` is a short code."""

    def __init__(self, field: str, reason: str, detail: str = "", row: int | None = None) -> None:
        self.field, self.reason, self.detail, self.row = field, reason, detail, row
        where = f" (row {row})" if row is not None else ""
        super().__init__(f"field {field!r}: {reason}{where}{': ' + detail if detail else ''}")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: FieldKind
    required: bool = True
    max_categories: int = 64
    hash_buckets: int = 0  # > 0: hash categoricals instead of a vocabulary
    cyclic: bool = True  # timestamps: add hour-of-day sin-cos (and day-of-week: ``weekday``)
    # timestamps (with ``cyclic``): add day-of-week sin-cos too; dropped at fit when the
    # training data spans less than a week (:data:`MIN_WEEKDAY_SPAN_S`), and the hour-of-day
    # with them when it spans less than a day (:data:`MIN_HOUR_SPAN_S`)
    weekday: bool = True

    @property
    def calendar_columns(self) -> int:
        """How many columns a timestamp adds: 0, 2 (hour of day) or 4 (and day of week)."""
        if self.kind is not FieldKind.TIMESTAMP or not self.cyclic:
            return 0
        return 4 if self.weekday else 2

    log: bool = False  # numerics: signed log1p before scaling (heavy-tailed amounts, counts)
    # numerics: the smallest scale the column is divided by, in its own units (0: none). An
    # entity feature that counts rows (``repeats``) has a unit of one row, so a feature that
    # was 0 in nearly every training row is not scaled by a spread of a few thousandths.
    unit: float = 0.0
    # numerics: False keeps the field checked (a bad value dead-letters its event) and read by
    # the entity features, but gives it no column of its own: the model sees it only through
    # them. For a metric whose level the training window cannot teach (a short warm-up, a trend).
    input: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.unit, bool) or not isinstance(self.unit, int | float) or not 0 <= self.unit < math.inf:
            raise ValueError(f"field {self.name!r}: unit is the smallest scale, a number >= 0 (got {self.unit!r})")
        if not self.input and self.kind is not FieldKind.NUMERIC:
            raise ValueError(f"field {self.name!r}: only a numeric field can be declared input: false")


@dataclass(frozen=True)
class FieldColumns:
    """Where one field sits in an encoded row: its value ``columns`` (one for a numeric or a
    boolean, the one-hot block for a categorical, four for a cyclic timestamp, none for a
    timestamp without them) and its ``missing_column`` when the field is optional.
    ``derived``: an entity feature (its value comes from the state, not the event)."""

    spec: FieldSpec
    columns: tuple[int, ...]
    missing_column: int | None = None
    derived: bool = False

    @property
    def all_columns(self) -> tuple[int, ...]:
        return self.columns + ((self.missing_column,) if self.missing_column is not None else ())


UNKNOWN_CATEGORY = "<unknown>"


@dataclass(frozen=True)
class FeatureSchema:
    """The declared fields of an event, which fields give its id and event time, and the
    entity it belongs to with its per-entity features (:mod:`stream_ae.entities.spec`)."""

    fields: tuple[FieldSpec, ...]
    id_field: str | None = None
    time_field: str | None = None
    entity: EntitySpec | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fields": [_field_dict(f) for f in self.fields],
            "id_field": self.id_field,
            "time_field": self.time_field,
        }
        if self.entity is not None:
            out["entity"] = self.entity.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        fields = tuple(FieldSpec(**{**f, "kind": FieldKind(f["kind"])}) for f in data["fields"])
        if not fields:
            raise ValueError("a feature schema needs at least one field")
        entity = EntitySpec.from_dict(data["entity"]) if data.get("entity") else None
        return cls(fields, data.get("id_field"), data.get("time_field"), entity)

    @property
    def derived_fields(self) -> tuple[FieldSpec, ...]:
        """The entity features as numeric fields (counts, sums and times heavy-tailed: log1p)."""
        if self.entity is None:
            return ()
        out = []
        for agg in self.entity.aggregates:
            heavy = agg.kind in ("count", "sum", "since_last")
            unit = 1.0 if agg.kind == "repeats" else 0.0  # a count of rows: one row is its unit
            out += [FieldSpec(name, FieldKind.NUMERIC, log=heavy, unit=unit) for name in agg.feature_names()]
        return tuple(out)

    @classmethod
    def load(cls, path: Path) -> FeatureSchema:
        """Read a schema from a ``.json`` or ``.yaml``/``.yml`` file."""
        text = Path(path).read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.from_dict(yaml.safe_load(text))
        import json

        return cls.from_dict(json.loads(text))

    @classmethod
    def infer(
        cls,
        sample: Sequence[Event],
        id_field: str | None = None,
        time_field: str | None = None,
        high_cardinality: int = 200,
        entity: EntitySpec | None = None,
    ) -> FeatureSchema:
        """Guess a schema from a sample: numbers are numeric, booleans boolean, strings
        categorical (hashed above ``high_cardinality`` distinct values); ``time_field`` is a
        timestamp; ``id_field`` is left out of the features. A field is required when every
        sampled event has it."""
        if not sample:
            raise ValueError("cannot infer a schema from an empty sample")
        names: dict[str, None] = {}
        for e in sample:
            names.update(dict.fromkeys(e))
        specs = []
        for name in names:
            if name == id_field or (entity is not None and name == entity.field):
                continue
            values = [e.get(name) for e in sample]
            present = [v for v in values if v is not None]
            required = len(present) == len(values)
            if name == time_field or (present and looks_like_time(name, present)):
                specs.append(FieldSpec(name, FieldKind.TIMESTAMP, required))
            elif present and all(type(v) is bool for v in present):
                specs.append(FieldSpec(name, FieldKind.BOOLEAN, required))
            elif present and all(type(v) in _NUMBER_TYPES for v in present):
                arr = np.abs(np.asarray(present, dtype=np.float64))
                heavy = bool(arr.min() >= 0 and np.quantile(arr, 0.99) > 5 * max(float(np.median(arr)), 1e-9))
                specs.append(FieldSpec(name, FieldKind.NUMERIC, required, log=heavy))
            elif present and all(isinstance(v, str) for v in present):
                distinct = len(set(present))
                buckets = 64 if distinct > high_cardinality else 0
                specs.append(FieldSpec(name, FieldKind.CATEGORICAL, required, hash_buckets=buckets))
            # fields of mixed or nested types are left out of an inferred schema
        if not specs:
            raise ValueError("no usable field found in the sample")
        if time_field is None:  # the event time: the first field that holds times
            time_field = next((f.name for f in specs if f.kind is FieldKind.TIMESTAMP), None)
        return cls(tuple(specs), id_field, time_field, entity)


# a name that says "time": ts, time, timestamp, date, datetime, epoch, and *_ts, *_time, *_at, ...
_TIME_NAME = re.compile(r"(?i:(^|[_.\-])(ts|time|timestamp|date|datetime|epoch)$|_at$)|[a-z](Time|Timestamp|At|Date)$")
# epoch seconds from 2001-09 to 2099, or the same in milliseconds
_EPOCH_S, _EPOCH_MS = (1.0e9, 4.1e9), (1.0e12, 4.1e12)
# RFC 3339 / ISO-8601 date and time: 2013-12-02T21:15:00Z, 2013-12-02 21:15:00.123+01:00
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE)


def looks_like_time(name: str, values: Sequence[Any]) -> bool:
    """True when sampled ``values`` of field ``name`` are times: every one an RFC 3339
    date-time string, or every one a number in the range of epoch seconds or milliseconds
    (2001-2099) under a time-like name (``ts``, ``time``, ``timestamp``, ``created_at``, ...).
    Such a field is a timestamp: its hour of day (and day of week) are features; its raw
    value, which only grows, is not.

    Example:
        >>> looks_like_time("when", ["2013-12-02T21:15:00Z", "2013-12-02T21:20:00Z"])
        True
        >>> looks_like_time("ts", [1_386_018_900, 1_386_019_200]), looks_like_time("bytes", [1_386_018_900])
        (True, False)
        >>> looks_like_time("ts", [17.5]), looks_like_time("code", ["2013-12-02"])
        (False, False)
    """
    if all(isinstance(v, str) for v in values):
        if not all(_DATETIME.match(v) for v in values):
            return False
        try:
            for v in values:
                parse_datetime(v)
        except ValueError:
            return False
        return True
    if not _TIME_NAME.search(name) or not all(type(v) in _NUMBER_TYPES for v in values):
        return False
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return any(a <= lo and hi <= b for a, b in (_EPOCH_S, _EPOCH_MS))


def _down(x: float) -> str:
    """``x`` to two decimals, rounded down: a span just short of a day reads 23.99 hours, not 24.0.

    Example:
        >>> _down(86_399 / 3600), _down(2.5)
        ('23.99', '2.5')
    """
    return f"{math.floor(x * 100) / 100:g}"


# the shortest training period that can teach day-of-week features: a week
MIN_WEEKDAY_SPAN_S = 7 * 86400.0
# the shortest training period that can teach hour-of-day features: a day
MIN_HOUR_SPAN_S = 86400.0


@dataclass
class EncodedBatch:
    """The result of encoding a batch: ``X`` holds the rows in ``ok`` (indices into the
    input), ``errors`` maps every other input index to its :class:`EncodeError`."""

    X: NDArray[np.float32]
    ok: NDArray[np.int64]
    errors: dict[int, EncodeError] = field(default_factory=dict)


def parse_datetime(text: str) -> datetime:
    """An RFC 3339 / ISO-8601 date-time string as an aware datetime. One without an offset
    (``2014-04-01 00:00:00``, as many CSV exports write it) is UTC: read in the host's own
    zone, the same event would get another hour of day on another host, and a stream would
    repeat or skip an hour at each daylight-saving change.

    Example:
        >>> parse_datetime("2014-04-01 00:00:00") == parse_datetime("2014-04-01T02:00:00+02:00")
        True
        >>> parse_datetime("2013-12-02t21:15:00z").isoformat()
        '2013-12-02T21:15:00+00:00'
    """
    if text[-1:] in ("Z", "z"):  # RFC 3339 allows either case; fromisoformat only "Z" (and not before 3.11)
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _to_epoch(value: Any) -> float:
    if type(value) in _NUMBER_TYPES:
        v = float(value)
        return v / 1000.0 if v > 1e11 else v  # epoch milliseconds are accepted too
    if isinstance(value, str):
        return parse_datetime(value).timestamp()
    raise TypeError(type(value).__name__)


def _floats(values: list[Any]) -> NDArray[np.float64]:
    """Numbers (and None, as NaN) to float64; integers beyond float range become infinite."""
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        return np.array([_safe_float(v) for v in values], dtype=np.float64)


def epoch_seconds(values: list[Any], name: str, bad: dict[int, EncodeError]) -> NDArray[np.float64]:
    """Timestamps (epoch seconds or milliseconds, or ISO-8601 strings) to epoch seconds; NaN
    where a value is missing or bad (and ``bad`` names the row). A column of numbers is
    converted in one step."""
    if set(map(type, values)) <= {int, float, type(None)}:
        col = _floats(values)
        with np.errstate(invalid="ignore"):
            return np.where(col > 1e11, col / 1000.0, col)  # epoch milliseconds are accepted too
    col = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            col[i] = _to_epoch(v)
        except (TypeError, ValueError, OverflowError) as exc:
            bad.setdefault(i, EncodeError(name, "bad_timestamp", str(exc)[:80]))
    return col


class FeatureEncoder:
    """Learns per-field statistics and turns event batches into float32 matrices."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.stats: dict[str, dict[str, Any]] = {}
        self.fitted = False
        self.notices: list[str] = []  # what fitting changed in the schema, in words

    # -- column extraction ---------------------------------------------------------------
    def _column(
        self, spec: FieldSpec, events: Sequence[Event], bad: dict[int, EncodeError]
    ) -> tuple[NDArray[np.float64] | list[Any], NDArray[np.bool_]]:
        """Raw values of a field and its missing mask; records rows with wrong types.

        Whole-column fast paths (one C-level pass: a type set, a ``None`` scan) decide whether
        the per-value checks are needed at all; clean columns never take them."""
        name = spec.name
        values = [e.get(name) for e in events]
        n = len(values)
        if None in values:
            missing = np.fromiter((v is None for v in values), dtype=bool, count=n)
            if spec.required:
                for i in np.flatnonzero(missing).tolist():
                    bad.setdefault(int(i), EncodeError(name, "missing_field", "required field is absent or null"))
        else:
            missing = np.zeros(n, dtype=bool)
        types = set(map(type, values))
        if spec.kind is FieldKind.NUMERIC:
            if not types <= {int, float, type(None)}:
                for i, v in enumerate(values):
                    if v is not None and type(v) not in _NUMBER_TYPES:
                        bad.setdefault(i, EncodeError(name, "wrong_type", f"expected a number, got {type(v).__name__}"))
                        values[i] = None
            col = _floats(values)
            nonfinite = ~np.isfinite(col) & ~missing
            for i in np.flatnonzero(nonfinite).tolist():
                if int(i) not in bad:
                    bad[int(i)] = EncodeError(name, "non_finite", f"value {col[i]!r} is not finite")
            if spec.log:
                col = signed_log1p(col)
            return col, missing
        if spec.kind is FieldKind.BOOLEAN:
            if types <= {bool}:
                return np.array(values, dtype=np.float64), missing
            for i, v in enumerate(values):
                if v is not None and type(v) is not bool:
                    bad.setdefault(i, EncodeError(name, "wrong_type", f"expected a boolean, got {type(v).__name__}"))
            return np.array([v is True for v in values], dtype=np.float64), missing
        if spec.kind is FieldKind.TIMESTAMP:
            col = epoch_seconds(values, name, bad)
            nonfinite = ~np.isfinite(col) & ~missing
            for i in np.flatnonzero(nonfinite).tolist():
                bad.setdefault(int(i), EncodeError(name, "non_finite", "timestamp is not finite"))
            return col, missing
        # categorical
        if not types <= {str, type(None)}:
            for i, v in enumerate(values):
                if (v is not None and not isinstance(v, str | int)) or type(v) is bool:
                    bad.setdefault(i, EncodeError(name, "wrong_type", f"expected a string, got {type(v).__name__}"))
                    values[i] = None
        return values, missing

    # -- fitting -------------------------------------------------------------------------
    def fit(self, events: Sequence[Event]) -> FeatureEncoder:
        """Learn statistics from events; rows that cannot be encoded are skipped. With an
        entity declaration the entity features are fitted after, by :meth:`fit_derived`, on
        what replaying the same events gives (:func:`stream_ae.features.featurize.fit_encoder`)."""
        bad: dict[int, EncodeError] = {}
        cols = {spec.name: self._column(spec, events, bad) for spec in self.schema.fields}
        keep = np.ones(len(events), dtype=bool)
        keep[list(bad)] = False
        if not keep.any():
            raise ValueError("no event of the sample could be encoded")
        self._drop_unseen_calendar(cols, keep)
        for spec in self.schema.fields:
            raw, missing = cols[spec.name]
            rows = keep & ~missing
            if spec.kind is FieldKind.NUMERIC:
                v = np.asarray(raw)[rows]
                self.stats[spec.name] = dict(robust_scaling(v, unit=spec.unit))
                if len(v):  # the training range (after the log when there is one): generated values stay in it
                    self.stats[spec.name].update(min=float(v.min()), max=float(v.max()))
            elif spec.kind is FieldKind.TIMESTAMP and np.any(rows):
                t = np.asarray(raw)[rows]
                self.stats[spec.name] = {"min": float(np.nanmin(t)), "max": float(np.nanmax(t))}
            elif spec.kind is FieldKind.CATEGORICAL and not spec.hash_buckets:
                counts = Counter(str(raw[i]) for i in np.flatnonzero(rows))
                vocab = [v for v, _ in counts.most_common(spec.max_categories)]
                self.stats[spec.name] = {"vocab": sorted(vocab)}
            else:
                self.stats[spec.name] = {}
        self.fitted = not self.schema.derived_fields
        self._index = {
            s.name: {v: i for i, v in enumerate(self.stats[s.name].get("vocab", []))} for s in self.schema.fields
        }
        return self

    def _drop_unseen_calendar(self, cols: dict[str, Any], keep: NDArray[np.bool_]) -> None:
        """Calendar features that the training period cannot teach are dropped (the schema
        changes, and :attr:`notices` says so): day-of-week when the timestamp's training
        values span less than a week, hour-of-day as well when they span less than a day. A
        model that never saw a Saturday flags every Saturday; one trained on twelve hours of a
        series flags the other twelve."""
        self.notices = []
        fields = list(self.schema.fields)
        for i, spec in enumerate(fields):
            if not spec.calendar_columns:  # not a timestamp with calendar features
                continue
            raw, missing = cols[spec.name]
            t = np.asarray(raw)[keep & ~missing]
            span = float(np.nanmax(t) - np.nanmin(t)) if len(t) else 0.0
            if span < MIN_HOUR_SPAN_S:
                fields[i] = replace(spec, cyclic=False, weekday=False)
                self.notices.append(
                    f"calendar features of {spec.name!r} dropped: the training data spans {_down(span / 3600)} hours, "
                    "less than a day (a model would flag every hour of the day it never saw); train on a day or "
                    "more to keep hour-of-day features, a week or more for day-of-week"
                )
            elif spec.weekday and span < MIN_WEEKDAY_SPAN_S:
                fields[i] = replace(spec, weekday=False)
                self.notices.append(
                    f"day-of-week features of {spec.name!r} dropped: the training data spans "
                    f"{_down(span / 86400)} days, less than a week (a model would flag every weekday it never saw); "
                    "train on a week or more to keep them"
                )
            else:
                continue
            log.warning("%s", self.notices[-1])
        if fields != list(self.schema.fields):
            self.schema = replace(self.schema, fields=tuple(fields))

    def fit_derived(self, derived: NDArray[np.float64]) -> FeatureEncoder:
        """Learn the robust scaling of the entity features from ``derived`` (rows x
        ``schema.derived_fields``: what the training events' replay gave)."""
        for j, spec in enumerate(self.schema.derived_fields):
            col = np.asarray(derived[:, j], dtype=np.float64)
            if spec.log:
                col = signed_log1p(col)
            self.stats[spec.name] = dict(robust_scaling(col[np.isfinite(col)], unit=spec.unit))
        self.fitted = True
        return self

    def scale_floor(self) -> NDArray[np.float64]:
        """Per encoded column, the smallest scale a model should divide it by: one declared
        ``unit`` in the encoded column's own scale where the field has one, else 0 (none).

        An entity feature that counts rows (``repeats``) is 0 in nearly every training row,
        so its spread is a few thousandths; divided by that, one chance repeat of a float
        reading would read like a frozen agent. With the floor, one repeat is one unit.

        Example:
            >>> spec = EntitySpec.from_dict({"features": [{"repeats": ["x"], "rows": 4}]})
            >>> enc = FeatureEncoder(FeatureSchema((FieldSpec("x", FieldKind.NUMERIC),), entity=spec))
            >>> enc = enc.fit([{"x": float(i)} for i in range(8)]).fit_derived(np.zeros((8, 1)))
            >>> enc.scale_floor().tolist()  # x has no unit; one repeat is one unit
            [0.0, 1.0]
        """
        floor = np.zeros(self.n_features)
        for fc in self.field_columns():
            if fc.spec.unit and fc.spec.kind is FieldKind.NUMERIC:
                floor[list(fc.columns)] = fc.spec.unit / self.stats[fc.spec.name]["iqr"]
        return floor

    def add_derived(self, batch: EncodedBatch, derived: NDArray[np.float64], keep: NDArray[np.int64]) -> EncodedBatch:
        """``batch`` restricted to its rows ``keep`` (indices into ``batch.X``), with the
        scaled entity features ``derived`` (one row per kept row) appended."""
        cols = []
        for j, spec in enumerate(self.schema.derived_fields):
            col = np.asarray(derived[:, j], dtype=np.float64)
            if spec.log:
                col = signed_log1p(col)
            st = self.stats[spec.name]
            cols.append(np.nan_to_num((col - st["median"]) / st["iqr"], nan=0.0, posinf=0.0, neginf=0.0))
        extra = np.stack(cols, axis=1) if cols else np.zeros((len(keep), 0))
        X = np.hstack([batch.X[keep], extra.astype(np.float32)])
        return EncodedBatch(X, batch.ok[keep], batch.errors)

    # -- encoding ------------------------------------------------------------------------
    def _value_names(self, spec: FieldSpec) -> list[str]:
        """The names of a declared field's value columns (its missing indicator aside): the
        one place that says how many columns each kind of field takes."""
        n = spec.name
        if not spec.input:  # checked and read by the entity features, no column of its own
            return []
        if spec.kind in (FieldKind.NUMERIC, FieldKind.BOOLEAN):
            return [n]
        if spec.kind is FieldKind.TIMESTAMP:
            return [f"{n}.hour_sin", f"{n}.hour_cos", f"{n}.dow_sin", f"{n}.dow_cos"][: spec.calendar_columns]
        if spec.hash_buckets:
            return [f"{n}#{b}" for b in range(spec.hash_buckets)]
        return [f"{n}={v}" for v in self.stats[n]["vocab"]] + [f"{n}=<unknown>"]

    def _has_missing_column(self, spec: FieldSpec) -> bool:
        return not spec.required and spec.input

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for spec in self.schema.fields:
            names += self._value_names(spec)
            if self._has_missing_column(spec):
                names.append(f"{spec.name}__missing")
        return names + [spec.name for spec in self.schema.derived_fields]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def field_columns(self) -> list[FieldColumns]:
        """Each field's place in the encoded row, in :attr:`feature_names` order (declared
        fields, then the entity features)."""
        out: list[FieldColumns] = []
        at = 0
        for spec in self.schema.fields:
            width = len(self._value_names(spec))
            cols = tuple(range(at, at + width))
            at += width
            missing = None
            if self._has_missing_column(spec):
                missing, at = at, at + 1
            out.append(FieldColumns(spec, cols, missing))
        for spec in self.schema.derived_fields:
            out.append(FieldColumns(spec, (at,), None, derived=True))
            at += 1
        return out

    def events_from_rows(self, rows: NDArray[Any], seed: int = 0, id_prefix: str = "synthetic") -> list[dict[str, Any]]:
        """Events from encoded rows (a generator's output): the inverse of :meth:`encode`.

        Numerics come back in their units, clipped to the training range; a categorical is
        drawn from the row's probabilities over the vocabulary (never ``<unknown>`` when the
        vocabulary has a value), a boolean from its probability of true; a timestamp gets the
        row's hour and day of week on a day of the training period. A hashed categorical has
        no inverse and is left out, as are a numeric declared ``input: false`` and the entity
        features (the state computes those from the stream). The id field, when the schema
        names one, is ``<id_prefix>-<n>``; the entity's key field, when it is not a declared
        field, ``<id_prefix>-entity-<k>`` for one of ``len(rows) // 5 + 1`` entities."""
        rng = np.random.default_rng(seed)
        fields = [f for f in self.field_columns() if not f.derived]
        n = len(rows)
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for f in fields:
            spec, st = f.spec, self.stats.get(f.spec.name, {})
            if not spec.input:  # no column: no value to give
                continue
            if spec.kind is FieldKind.NUMERIC:
                x = np.asarray(rows[:, f.columns[0]], dtype=np.float64) * st["iqr"] + st["median"]
                if "min" in st:
                    x = np.clip(x, st["min"], st["max"])
                if spec.log:
                    x = signed_expm1(x)
                for e, v in zip(out, x.tolist(), strict=True):
                    e[spec.name] = round(v, 6)
            elif spec.kind is FieldKind.BOOLEAN:
                p = np.clip(np.asarray(rows[:, f.columns[0]], dtype=np.float64), 0.0, 1.0)
                for e, v in zip(out, (rng.random(n) < p).tolist(), strict=True):
                    e[spec.name] = v
            elif spec.kind is FieldKind.TIMESTAMP:
                if not f.columns or "min" not in st:
                    continue
                hs, hc = (np.asarray(rows[:, c], dtype=np.float64) for c in f.columns[:2])
                hour = (np.arctan2(hs, hc) / (2 * math.pi) * 24) % 24
                day = np.floor(rng.uniform(st["min"], st["max"] + 1, n) / 86400)
                if len(f.columns) == 4:  # with day-of-week features: on a day of the row's weekday
                    ds, dc = (np.asarray(rows[:, c], dtype=np.float64) for c in f.columns[2:])
                    dow = np.round((np.arctan2(ds, dc) / (2 * math.pi) * 7) % 7).astype(np.int64) % 7
                    day += (dow - (day + 3) % 7 + 7) % 7  # move to the row's day of week (day 0 was a Thursday)
                    day -= 7 * (day * 86400 > st["max"])  # a week back where that left the training period
                for e, v in zip(out, (day * 86400 + hour * 3600).tolist(), strict=True):
                    e[spec.name] = round(v, 3)
            elif not spec.hash_buckets:
                vocab = self.stats[spec.name]["vocab"]
                if not vocab:
                    continue
                w = np.clip(np.asarray(rows[:, list(f.columns[: len(vocab)])], dtype=np.float64), 0.0, None) + 1e-9
                cum = np.cumsum(w / w.sum(1, keepdims=True), axis=1)
                pick = (cum < rng.random((n, 1))).sum(1).clip(0, len(vocab) - 1)
                for e, k in zip(out, pick.tolist(), strict=True):
                    e[spec.name] = vocab[k]
        entity = self.schema.entity
        declared = {s.name for s in self.schema.fields}
        for i, e in enumerate(out):
            if self.schema.id_field and self.schema.id_field not in declared:
                e[self.schema.id_field] = f"{id_prefix}-{i}"
            if entity is not None and entity.field and entity.field not in declared:
                e[entity.field] = f"{id_prefix}-entity-{rng.integers(n // 5 + 1)}"
        return out

    def decode_field(self, field: FieldColumns, row: NDArray[Any]) -> dict[str, Any]:
        """The inverse of the encoding for one field of one encoded row (an encoded event, or a
        model's reconstruction of one), in the event's own units:

        * numeric: ``value``, the scaling undone (and the signed ``log1p``);
        * boolean: ``probability_true`` (the column clipped to [0, 1]) and ``value`` (≥ 0.5);
        * categorical: ``probabilities`` over the vocabulary and ``<unknown>`` (the one-hot
          block clipped at 0 and normalised), ``value`` the most likely and its ``probability``;
          a hashed categorical has no inverse: ``value`` None and ``unavailable``; nor has a
          numeric declared ``input: false`` (it has no column);
        * timestamp: ``hour_of_day`` and ``day_of_week`` (0 = Monday) from the cyclic columns;
        * an optional field adds ``probability_missing``.

        Example:
            >>> enc = FeatureEncoder(FeatureSchema.infer([{"amount": 10.0}, {"amount": 30.0}]))
            >>> enc = enc.fit([{"amount": 10.0}, {"amount": 30.0}])
            >>> f = enc.field_columns()[0]
            >>> round(enc.decode_field(f, enc.transform([{"amount": 21.0}])[0])["value"], 6)
            21.0
        """
        spec, v = field.spec, row
        out: dict[str, Any] = {}
        if not spec.input:
            out.update(value=None, unavailable="not_a_model_input")
        elif spec.kind is FieldKind.NUMERIC:  # scalar arithmetic: an anomaly flood decodes many
            st = self.stats[spec.name]
            x = float(v[field.columns[0]]) * st["iqr"] + st["median"]
            out["value"] = signed_expm1(x) if spec.log else x
        elif spec.kind is FieldKind.BOOLEAN:
            p_true = min(max(float(v[field.columns[0]]), 0.0), 1.0)
            out.update(value=p_true >= 0.5, probability_true=p_true)
        elif spec.kind is FieldKind.TIMESTAMP:
            if field.columns:
                hs, hc = (float(v[c]) for c in field.columns[:2])
                out["hour_of_day"] = (math.atan2(hs, hc) / (2 * math.pi) * 24) % 24
                if len(field.columns) == 4:
                    ds, dc = (float(v[c]) for c in field.columns[2:])
                    out["day_of_week"] = round((math.atan2(ds, dc) / (2 * math.pi) * 7) % 7) % 7
            else:
                out.update(value=None, unavailable="timestamp_without_cyclic_features")
        elif spec.hash_buckets:
            out.update(value=None, unavailable="hashed_category")
        else:
            names = [*self.stats[spec.name]["vocab"], UNKNOWN_CATEGORY]
            w = np.clip(np.asarray(v, dtype=np.float64)[list(field.columns)], 0.0, None)
            total = float(w.sum())
            p = w / total if total > 0 else np.full(len(w), 1.0 / len(w))
            k = int(np.argmax(p))
            out.update(value=names[k], probability=float(p[k]), probabilities=dict(zip(names, p.tolist(), strict=True)))
        if field.missing_column is not None:
            out["probability_missing"] = min(max(float(v[field.missing_column]), 0.0), 1.0)
        return out

    def encode(self, events: Sequence[Event]) -> EncodedBatch:
        """Encode a batch; rows with bad values are reported in ``errors``, not encoded. With
        an entity declaration this is the declared fields' part only: the entity features come
        from the state (:func:`stream_ae.features.featurize.featurize`), which adds them."""
        if not self.fitted and not (self.schema.derived_fields and self.stats):
            raise RuntimeError("fit the encoder first")
        n = len(events)
        bad: dict[int, EncodeError] = {}
        blocks: list[NDArray[np.float64]] = []
        for spec in self.schema.fields:
            raw, missing = self._column(spec, events, bad)
            if not spec.input:  # checked above (a bad value is reported), no column
                continue
            st = self.stats[spec.name]
            if spec.kind is FieldKind.NUMERIC:
                col = (np.asarray(raw) - st["median"]) / st["iqr"]
                blocks.append(np.where(missing, 0.0, col)[:, None])
            elif spec.kind is FieldKind.BOOLEAN:
                blocks.append(np.asarray(raw)[:, None])
            elif spec.kind is FieldKind.TIMESTAMP:
                if spec.calendar_columns:
                    t = np.where(missing, 0.0, np.nan_to_num(np.asarray(raw)))
                    hour = 2 * math.pi * ((t % 86400) / 86400)
                    block = [np.sin(hour), np.cos(hour)]
                    if spec.calendar_columns == 4:
                        dow = 2 * math.pi * (((t // 86400 + 3) % 7) / 7)  # 1970-01-01 was a Thursday
                        block += [np.sin(dow), np.cos(dow)]
                    blocks.append(np.stack(block, 1))
            else:
                blocks.append(self._one_hot(spec, raw, missing))
            if not spec.required:
                blocks.append(missing[:, None].astype(np.float64))
        X = np.hstack(blocks) if blocks else np.zeros((n, 0))
        ok = np.ones(n, dtype=bool)
        ok[list(bad)] = False
        idx = np.flatnonzero(ok)
        return EncodedBatch(X[idx].astype(np.float32), idx, {i: bad[i] for i in sorted(bad)})

    def _one_hot(self, spec: FieldSpec, raw: Any, missing: NDArray[np.bool_]) -> NDArray[np.float64]:
        n = len(raw)
        if spec.hash_buckets:
            width = spec.hash_buckets
            codes = np.fromiter(
                (zlib.crc32(str(v).encode()) % width if v is not None else 0 for v in raw), np.int64, count=n
            )
        else:
            index = self._index[spec.name]
            width = len(index) + 1
            unknown = width - 1
            if set(map(type, raw)) <= {str, type(None)}:
                codes = np.fromiter(map(index.get, raw, itertools.repeat(unknown, n)), np.int64, count=n)
            else:  # integers are looked up as their text; None (missing) is unknown, then zeroed
                codes = np.fromiter(
                    (index.get(str(v), unknown) if v is not None else unknown for v in raw), np.int64, count=n
                )
        out = np.zeros((n, width))
        out[np.arange(n), codes] = 1.0
        out[missing] = 0.0
        return out

    def transform(self, events: Sequence[Event]) -> NDArray[np.float32]:
        """Encode a batch or raise :class:`EncodeError` for the first bad row (a schema without
        an entity declaration: entity features need the state, see :mod:`stream_ae.features.featurize`)."""
        if self.schema.entity is not None:
            raise ValueError("this schema declares entity features: encode through stream_ae.features.featurize")
        batch = self.encode(events)
        if batch.errors:
            row, err = next(iter(batch.errors.items()))
            raise EncodeError(err.field, err.reason, err.detail, row=row)
        return batch.X

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema.to_dict(), "stats": self.stats}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        enc = cls(FeatureSchema.from_dict(data["schema"]))
        enc.stats = {k: dict(v) for k, v in data["stats"].items()}
        enc.fitted = True
        enc._index = {
            s.name: {v: i for i, v in enumerate(enc.stats[s.name].get("vocab", []))} for s in enc.schema.fields
        }
        return enc


def _field_dict(spec: FieldSpec) -> dict[str, Any]:
    """One field as the schema file writes it (``unit`` and ``input`` only where set: older
    files lack them)."""
    out = {**asdict(spec), "kind": spec.kind.value}
    if not spec.unit:
        del out["unit"]
    if spec.input:
        del out["input"]
    return out


def robust_scaling(values: NDArray[np.float64], unit: float = 0.0) -> dict[str, float]:
    """``median`` and ``iqr`` of a numeric column (the standard deviation where the IQR is
    zero, 1 where both are), the scale at least ``unit``: what :meth:`FeatureEncoder.encode`
    scales it by.

    Example:
        >>> robust_scaling(np.array([0.0] * 999 + [1.0]))["iqr"] < 0.05  # one non-zero row
        True
        >>> robust_scaling(np.array([0.0] * 999 + [1.0]), unit=1.0)["iqr"]  # a count of rows
        1.0
    """
    if not len(values):
        return {"median": 0.0, "iqr": max(1.0, float(unit))}
    q75, q25 = np.percentile(values, [75, 25])
    iqr = float(q75 - q25)
    if iqr <= 1e-12:
        iqr = float(values.std())
    return {"median": float(np.median(values)), "iqr": max(iqr if iqr > 1e-12 else 1.0, float(unit))}


def _safe_float(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except OverflowError:
        return math.inf
