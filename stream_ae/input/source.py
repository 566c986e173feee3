"""Where a record lies in Kafka: every record about an input record (anomaly, dead letter,
score, verdict) carries its input record's coordinates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# where a record lies in Kafka: every record about an input record carries it
SOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["topic", "partition", "offset"],
    "properties": {
        "topic": {"type": "string"},
        "partition": {"type": "integer"},
        "offset": {"type": "integer"},
    },
}


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def ident(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @classmethod
    def from_dict(cls, value: Any) -> Source:
        """A record's ``source`` object back; ``ValueError`` when it is not one."""
        try:
            return cls(str(value["topic"]), int(value["partition"]), int(value["offset"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"source needs topic, partition and offset: {exc!r}") from exc

    @classmethod
    def parse(cls, text: str) -> Source | None:
        """``topic:partition:offset`` (what :meth:`ident` writes), else None.

        Example:
            >>> Source.parse("events:2:41"), Source.parse("tx-7")
            (Source(topic='events', partition=2, offset=41), None)
        """
        m = _COORDINATES.match(text)
        return cls(m["topic"], int(m["partition"]), int(m["offset"])) if m else None


_COORDINATES = re.compile(r"^(?P<topic>[A-Za-z0-9._-]+):(?P<partition>\d+):(?P<offset>\d+)$")
