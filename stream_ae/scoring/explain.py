"""What the model expected: a flagged event's top fields, each with its observed value and the
model's expected value in the event's own units (anomaly records, ``stream-ae.anomaly/2``).

Between scoring and routing in the flow. The scorer gives, for flagged rows only, the top
fields by share of squared reconstruction error and the reconstruction itself
(:meth:`AutoencoderDetector.explain_fields_tensor`); the detector maps the reconstruction back
to the encoder's units (:meth:`AutoencoderDetector.unscale`) and the encoder back to the
event's (:meth:`FeatureEncoder.decode_field`). This module only puts the pieces in a record.

One entry per field, not per encoded column (``country``, not ``country=DE``)::

    {"field": "amount", "share": 0.81, "observed": 4980.0, "expected": 41.7}
    {"field": "country", "share": 0.12, "observed": "NG", "observed_probability": 0.002,
     "expected": "DE", "expected_probability": 0.93}
    {"field": "card_present", "share": 0.05, "observed": true, "expected": false,
     "probability_true": 0.03}
    {"field": "ts", "share": 0.02, "observed": 1764040000.0, "expected": null, "observed_hour": 3.1,
     "expected_hour": 14.2, "observed_day_of_week": 2, "expected_day_of_week": 2}
    {"field": "amount_ewm_z", "share": 0.3, "observed": 9.1, "expected": 0.2, "entity_feature": true}
    {"field": "merchant", "share": 0.1, "observed": "m-17", "expected": null,
     "no_expected": "hashed_category"}

Example:
    >>> from stream_ae.features.encoder import FeatureEncoder, FeatureSchema
    >>> events = [{"amount": float(a), "kind": "a" if a < 50 else "b"} for a in range(100)]
    >>> enc = FeatureEncoder(FeatureSchema.infer(events)).fit(events)
    >>> ex = FieldExplainer(enc)
    >>> x = enc.transform([events[3]])[0]
    >>> ex.entry(1, 0.7, events[3], x, x)["expected"]
    'a'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.features.encoder import FeatureEncoder, FieldKind


def _num(x: float) -> float:
    """Six significant digits: what an analyst reads, and JSON-safe."""
    return float(f"{x:.6g}") if math.isfinite(x) else float("nan")


class FieldExplainer:
    """Turns a flagged row's top fields into record entries; ``groups[j]`` is the field of
    encoded column ``j`` (what the scorer adds shares by)."""

    def __init__(self, encoder: FeatureEncoder) -> None:
        self.encoder = encoder
        self.fields = encoder.field_columns()
        self.names = [f.spec.name for f in self.fields]
        groups = np.zeros(encoder.n_features, dtype=np.int64)
        for i, f in enumerate(self.fields):
            groups[list(f.all_columns)] = i
        self.groups = groups

    def entry(
        self,
        field_index: int,
        share: float,
        event: Mapping[str, Any],
        x_row: NDArray[Any],
        expected_row: NDArray[Any],
    ) -> dict[str, Any]:
        """One top field of one event: ``x_row`` the encoded event, ``expected_row`` the
        reconstruction in the same (encoded) units."""
        f = self.fields[field_index]
        spec = f.spec
        out: dict[str, Any] = {"field": spec.name, "share": round(float(share), 4)}
        expected = self.encoder.decode_field(f, expected_row)
        if f.derived:  # an entity feature: its observed value is the one the state gave
            out["observed"] = _num(self.encoder.decode_field(f, x_row)["value"])
            out["expected"] = _num(expected["value"])
            out["entity_feature"] = True
            return out
        observed = event.get(spec.name)
        out["observed"] = observed
        if "unavailable" in expected:
            out.update(expected=None, no_expected=expected["unavailable"])
        elif spec.kind is FieldKind.NUMERIC:
            out["expected"] = _num(expected["value"])
        elif spec.kind is FieldKind.BOOLEAN:
            out.update(expected=expected["value"], probability_true=round(expected["probability_true"], 4))
        elif spec.kind is FieldKind.TIMESTAMP:
            seen = self.encoder.decode_field(f, x_row)
            out.update(
                expected=None,  # a time is not reconstructed, its hour (and weekday) are
                observed_hour=round(seen["hour_of_day"], 2),
                expected_hour=round(expected["hour_of_day"], 2),
            )
            if "day_of_week" in seen:  # a schema with day-of-week features
                out.update(observed_day_of_week=seen["day_of_week"], expected_day_of_week=expected["day_of_week"])
        else:
            probs: dict[str, float] = expected["probabilities"]
            seen_as = str(observed) if str(observed) in probs else "<unknown>"
            out.update(
                observed_probability=round(probs.get(seen_as, 0.0), 4),
                expected=expected["value"],
                expected_probability=round(expected["probability"], 4),
            )
        if "probability_missing" in expected:
            out["probability_missing"] = round(expected["probability_missing"], 4)
        return out


def _show(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "missing"
    if isinstance(v, float | int):
        return f"{v:,.2f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def describe(entries: list[Mapping[str, Any]]) -> str:
    """A record's ``top_features`` as an analyst reads them.

    Example:
        >>> describe([{"field": "amount", "share": 0.8, "observed": 4980.0, "expected": 41.7},
        ...           {"field": "country", "share": 0.1, "observed": "NG", "expected": "DE",
        ...            "observed_probability": 0.002, "expected_probability": 0.93}])
        'amount 4,980.00, expected about 41.70; country NG (p 0.002), expected DE (p 0.93)'
    """
    parts = []
    for e in entries:
        name, seen, want = e.get("field", e.get("feature", "?")), e.get("observed"), e.get("expected")
        if "expected_hour" in e:
            parts.append(f"{name} at {e['observed_hour']:.1f} h, expected about {e['expected_hour']:.1f} h")
        elif "expected_probability" in e:
            seen_p, want_p = e.get("observed_probability", 0.0), e["expected_probability"]
            parts.append(f"{name} {_show(seen)} (p {seen_p:.3g}), expected {want} (p {want_p:.2g})")
        elif "probability_true" in e:
            parts.append(f"{name} {_show(seen)}, true with probability {e['probability_true']:.2g}")
        elif want is None:
            parts.append(f"{name} {_show(seen)}" + (f" ({e['no_expected']})" if "no_expected" in e else ""))
        elif "observed" in e:
            parts.append(f"{name} {_show(seen)}, expected about {_show(want)}")
        else:  # a version 1 entry: a column and its share
            parts.append(f"{name} ({e.get('share', 0):.0%})")
    return "; ".join(parts)
