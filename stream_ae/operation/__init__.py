"""What a running process exports and takes of its host.

* :mod:`stream_ae.operation.metrics`: the worker's Prometheus metrics in their own registry, and
  a reader of the text exposition;
* :mod:`stream_ae.operation.runtime`: CPU threads, priority and stop signals.
"""
