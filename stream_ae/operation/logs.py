"""Log records that say what they mean: a retriable Kafka condition is not an error.

aiokafka logs a failed group-coordinator lookup at ERROR and retries on its own; on a fresh
cluster or while a coordinator moves that is routine (``GroupCoordinatorNotAvailableError``
at a worker's first start). An error that is not one teaches operators to ignore errors, so
:func:`quiet_retriable_kafka_errors` turns such records into warnings; a non-retriable
failure stays an error.

Example:
    >>> import aiokafka.errors as e
    >>> record = logging.LogRecord("x", logging.ERROR, "", 0, "Group Coordinator Request failed: %s",
    ...                            (e.GroupCoordinatorNotAvailableError(),), None)
    >>> RetriableAsWarning().filter(record), record.levelname
    (True, 'WARNING')
"""

from __future__ import annotations

import logging

COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"


class RetriableAsWarning(logging.Filter):
    """An ERROR record whose argument is a retriable Kafka error becomes a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.levelno == logging.ERROR and any(getattr(a, "retriable", False) for a in args):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_retriable_kafka_errors() -> None:
    """Install :class:`RetriableAsWarning` on aiokafka's coordinator logger (once)."""
    logger = logging.getLogger(COORDINATOR_LOGGER)
    if not any(isinstance(f, RetriableAsWarning) for f in logger.filters):
        logger.addFilter(RetriableAsWarning())
