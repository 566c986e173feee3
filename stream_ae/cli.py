"""The ``stream-ae`` command line (typer). Each sub-command is a thin shell over library code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Streaming anomaly detection for Kafka.")
kafka_app = typer.Typer(no_args_is_help=True, help="A real local Kafka broker (KRaft) for development.")
app.add_typer(kafka_app, name="kafka")
console = Console(stderr=True)

DEFAULT_KAFKA_DIR = Path(os.environ.get("STREAM_AE_KAFKA_DIR", ".stream-ae/kafka"))
KafkaDir = Annotated[Path, typer.Option("--dir", help="broker state (config, KRaft logs, pid, log file)")]


@kafka_app.command("start")
def kafka_start(
    data_dir: KafkaDir = DEFAULT_KAFKA_DIR,
    port: Annotated[int, typer.Option(help="listener port (0: keep the last one or pick a free one)")] = 0,
    fresh: Annotated[bool, typer.Option(help="wipe earlier data first")] = False,
) -> None:
    """Resolve the broker jars with Maven (cached), format storage and start the broker."""
    from stream_ae.kafka_local import KafkaLocalError, LocalKafka

    broker = LocalKafka(data_dir, port=port)
    if broker.running_pid() is not None:
        console.print(f"[yellow]a broker already runs at {broker.bootstrap_servers}[/]")
        print(broker.bootstrap_servers)
        return
    if fresh:
        broker.wipe()
        broker = LocalKafka(data_dir, port=port)
    try:
        with console.status("starting Kafka (the first start resolves the jars with mvn)…"):
            broker.start()
    except KafkaLocalError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"[green]Kafka is up[/] at {broker.bootstrap_servers} (log: {broker.log_file})")
    print(broker.bootstrap_servers)


@kafka_app.command("stop")
def kafka_stop(data_dir: KafkaDir = DEFAULT_KAFKA_DIR) -> None:
    """Stop the broker started from ``--dir`` (SIGTERM, then wait)."""
    from stream_ae.kafka_local import LocalKafka

    broker = LocalKafka(data_dir)
    if broker.running_pid() is None:
        console.print("no broker is running there")
        return
    broker.stop()
    console.print("Kafka stopped")


@kafka_app.command("status")
def kafka_status(data_dir: KafkaDir = DEFAULT_KAFKA_DIR) -> None:
    """Say whether the broker runs and answers metadata requests."""
    from stream_ae.kafka_local import LocalKafka, broker_answers

    broker = LocalKafka(data_dir)
    pid = broker.running_pid()
    if pid is None:
        console.print("stopped")
        raise typer.Exit(1)
    ok = broker_answers(broker.bootstrap_servers)
    console.print(f"running (pid {pid}) at {broker.bootstrap_servers}; answers: {ok}")
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
