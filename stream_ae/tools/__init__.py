"""The command line and what it drives outside the hot path.

* :mod:`stream_ae.tools.cli`: the ``stream-ae`` command;
* :mod:`stream_ae.tools.demo`: the whole stack on one machine;
* :mod:`stream_ae.tools.produce` and :mod:`stream_ae.tools.synthetic`: replayed and generated events;
* :mod:`stream_ae.tools.audit`: output topics read back to account for every input record;
* :mod:`stream_ae.tools.worker_process` and :mod:`stream_ae.tools.prometheus_local`: a worker and a
  Prometheus server as child processes, for tests, benchmarks and the demo.
"""
