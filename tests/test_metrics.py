"""Reading the worker's metrics back over HTTP, as the demo, the tests and the benchmarks do."""

from __future__ import annotations

from stream_ae.kafka.local import free_port
from stream_ae.operation.metrics import WorkerMetrics, parse_exposition, scrape


def test_scrape_reads_every_sample_of_a_served_registry_with_awkward_label_values() -> None:
    metrics = WorkerMetrics()
    metrics.dead_lettered.labels(reason="schema wrong type").inc(3)  # a space in a label value
    metrics.anomalies.labels(topic='odd"topic\\name').inc(2)  # a quote and a backslash
    metrics.scored.inc(41)
    metrics.batch_size.observe(100)
    port = free_port()
    server = metrics.serve("127.0.0.1", port)
    try:
        m = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    assert m["stream_ae_events_scored_total"] == 41
    assert m['stream_ae_events_dead_lettered_total{reason="schema wrong type"}'] == 3
    assert m['stream_ae_anomalies_total{topic="odd\\"topic\\\\name"}'] == 2
    assert m['stream_ae_batch_size_bucket{le="128.0"}'] == 1
    assert m["stream_ae_batch_size_count"] == 1


def test_parse_exposition_takes_timestamps_and_escaped_newlines() -> None:
    text = (
        "# HELP x_total Things\n# TYPE x_total counter\n"
        'x_total{where="line one\\nline two"} 7 1700000000000\n'
        "# TYPE temperature gauge\ntemperature -1.5e+01\n"
    )
    assert parse_exposition(text) == {'x_total{where="line one\\nline two"}': 7.0, "temperature": -15.0}


def test_free_ports_are_never_handed_out_twice() -> None:
    """A worker takes two ports (metrics, web) one after the other: they must differ."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
