"""The streaming worker: a Faust (mode) service and the three jobs it wires together.

* :mod:`stream_ae.worker.loop`: the batch loop (fetch, process, publish, commit, rewind);
* :mod:`stream_ae.worker.follower`: which model scores (initial load, announcements, the
  registry's LATEST pointer, swaps between two batches);
* :mod:`stream_ae.worker.health`: score drift, consumer lag and broker reachability;
* :mod:`stream_ae.worker.service`: :class:`BatchWorker`, which owns the Kafka clients and
  the threads, starts and stops them in order, and runs the three jobs as its tasks.
"""

from stream_ae.worker.service import BatchWorker

__all__ = ["BatchWorker"]
