"""The ``stream-ae`` command line (typer). Each sub-command is a thin shell over library code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Streaming anomaly detection for Kafka.")
kafka_app = typer.Typer(no_args_is_help=True, help="A real local Kafka broker (KRaft) for development.")
app.add_typer(kafka_app, name="kafka")
models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, show, promote, roll back.")
app.add_typer(models_app, name="models")
console = Console(stderr=True)


def forced_on_second_signal(force: Any) -> Any:
    """A context in which SIGINT or SIGTERM calls ``force`` (a second Ctrl-C: stop at once)."""
    from stream_ae.operation.runtime import on_stop_signal

    return on_stop_signal(force)


DEFAULT_KAFKA_DIR = Path(os.environ.get("STREAM_AE_KAFKA_DIR", ".stream-ae/kafka"))
KafkaDir = Annotated[Path, typer.Option("--dir", help="broker state (config, KRaft logs, pid, log file)")]


@kafka_app.command("start")
def kafka_start(
    data_dir: KafkaDir = DEFAULT_KAFKA_DIR,
    port: Annotated[int, typer.Option(help="listener port (0: keep the last one or pick a free one)")] = 0,
    fresh: Annotated[bool, typer.Option(help="wipe earlier data first")] = False,
    foreground: Annotated[bool, typer.Option(help="keep running; Ctrl-C stops the broker")] = False,
) -> None:
    """Resolve the broker jars with Maven (cached), format storage and start the broker (in
    the background, or with --foreground until Ctrl-C)."""
    from stream_ae.kafka.local import KafkaLocalError, LocalKafka

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
    print(broker.bootstrap_servers, flush=True)
    if foreground:
        from stream_ae.operation.runtime import wait_for_stop_signal

        wait_for_stop_signal()
        console.print("stopping Kafka (Ctrl-C again: at once)")
        with forced_on_second_signal(broker.kill):
            broker.stop(timeout_s=10.0)
        console.print("Kafka stopped")


@kafka_app.command("stop")
def kafka_stop(data_dir: KafkaDir = DEFAULT_KAFKA_DIR) -> None:
    """Stop the broker started from ``--dir`` (SIGTERM, then wait)."""
    from stream_ae.kafka.local import LocalKafka

    broker = LocalKafka(data_dir)
    if broker.running_pid() is None:
        console.print("no broker is running there")
        return
    broker.stop()
    console.print("Kafka stopped")


@kafka_app.command("status")
def kafka_status(data_dir: KafkaDir = DEFAULT_KAFKA_DIR) -> None:
    """Say whether the broker runs and answers metadata requests."""
    from stream_ae.kafka.local import LocalKafka, broker_answers

    broker = LocalKafka(data_dir)
    pid = broker.running_pid()
    if pid is None:
        console.print("stopped")
        raise typer.Exit(1)
    ok = broker_answers(broker.bootstrap_servers)
    console.print(f"running (pid {pid}) at {broker.bootstrap_servers}; answers: {ok}")
    if not ok:
        raise typer.Exit(1)


@app.command()
def worker() -> None:
    """Run the streaming worker (configured by STREAM_AE_* variables: docs/reference/settings.md)."""
    import sys

    from stream_ae.operation.runtime import limit_threads
    from stream_ae.settings import Settings

    settings = Settings()
    limit_threads(settings.torch_threads, settings.torch_interop_threads)
    from stream_ae.worker.app import create_app

    faust_app, _ = create_app(settings)
    faust_levels = {"CRITICAL": "crit", "ERROR": "error", "WARNING": "warn", "INFO": "info", "DEBUG": "debug"}
    level = faust_levels.get(settings.log_level.upper(), "info")
    sys.argv = [sys.argv[0], "worker", "--loglevel", level]
    faust_app.main()


@app.command()
def train(
    input: Annotated[Path, typer.Argument(help="events (.jsonl) or a numeric matrix (.npz / .csv)")],
    out: Annotated[Path | None, typer.Option(help="artifact directory to write")] = None,
    registry: Annotated[Path | None, typer.Option(help="publish into this registry instead")] = None,
    variant: Annotated[str, typer.Option(help="ncae | ae | dae | sparse | contractive | vae")] = "ncae",
    target_rate: Annotated[float, typer.Option(help="false-alarm rate the threshold is calibrated to")] = 0.001,
    max_steps: Annotated[int, typer.Option(help="optimiser steps at most")] = 2000,
    neighbour_sets: Annotated[
        int,
        typer.Option(
            help="ncae: random samples of training rows the neighbour part measures isolation in; "
            "fewer score faster (16: about half the part's cost at about the same quality; 0: no neighbour part)",
            min=0,
        ),
    ] = 32,
    seed: int = 0,
    device: str = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast for the layers (for CUDA)")] = False,
    schema: Annotated[Path | None, typer.Option(help="feature schema (.json/.yaml); inferred if absent")] = None,
    schema_out: Annotated[
        Path | None, typer.Option(help="write the schema the model uses (inferred or given) to this .json/.yaml file")
    ] = None,
    key_field: Annotated[
        str | None, typer.Option(help="the field that stands for the Kafka record key (entities keyed by it)")
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(
            help="a column (CSV), array (.npz) or field (JSON lines) of known labels, not a feature: "
            "1/true/anomaly, 0/false/normal, blank for unknown. Known anomalies neither train nor set the threshold"
        ),
    ] = None,
) -> None:
    """Train a model from a file and write it as a checksummed artifact. With entity
    features in the schema the file is replayed in order through the entity state first.
    Training data that holds anomalies carries the threshold above them (no rule on the scores
    alone can tell them from a heavy normal tail); label the ones you know with
    ``--label-column``."""
    import secrets
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from stream_ae.features.encoder import FeatureSchema
    from stream_ae.lifecycle.registry import Registry
    from stream_ae.models import DegenerateDataError
    from stream_ae.models.detector import neighbour_options
    from trainer.train import fit_events, fit_matrix

    if (out is None) == (registry is None):
        raise typer.BadParameter("give exactly one of --out and --registry")
    events, X, labels = _read_input(input, label_column)
    hyper: dict[str, Any] = {
        "variant": variant,
        "target_rate": target_rate,
        "max_steps": max_steps,
        "seed": seed,
        "device": device,
        "bf16": bf16,
        **neighbour_options(variant, neighbour_sets),
    }
    with Progress(
        TextColumn("[bold]training {task.fields[variant]}"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=None, variant=variant, loss=float("nan"))

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss)

        try:
            if events is not None:
                fitted = fit_events(
                    events,
                    schema=FeatureSchema.load(schema) if schema else None,
                    key_field=key_field,
                    progress=progress,
                    labels=labels,
                    **hyper,
                )
            else:
                fitted = fit_matrix(X, progress=progress, labels=labels, **hyper)
        except DegenerateDataError as exc:
            bar.stop()
            console.print(f"[red]cannot train on {input}: {exc}[/]")
            raise typer.Exit(2) from exc
    version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{secrets.token_hex(2)}"
    if registry is not None:
        info = Registry(registry).publish(lambda tmp: fitted.save(tmp, version=version), version)
        console.print(f"[green]published[/] {info.version} to {registry}")
    else:
        assert out is not None
        fitted.save(out, version=version)
        console.print(f"[green]saved[/] {out}")
    console.print(f"threshold {fitted.detector.threshold_:.4f} at false-alarm rate {target_rate}")
    if fitted.encoder is not None:
        for notice in fitted.encoder.notices:
            console.print(f"[yellow]note:[/] {notice}")
        import json

        used = json.dumps(fitted.encoder.schema.to_dict(), indent=2)
        if schema_out is not None:
            if schema_out.suffix in (".yaml", ".yml"):
                import yaml

                schema_out.write_text(yaml.safe_dump(fitted.encoder.schema.to_dict(), sort_keys=False))
            else:
                schema_out.write_text(used + "\n")
            console.print(f"schema written to {schema_out}: edit it and pass it back with --schema")
        elif schema is None:  # show what was guessed, in the form --schema takes
            console.print("schema (inferred; --schema-out FILE saves it; edit it and pass it with --schema):")
            console.print_json(used)
    known = fitted.detector.labels_
    if known is not None:
        console.print(
            f"labels: {known['anomalies']} known anomalies (kept out of training and calibration), "
            f"{known['normals']} known normals"
        )


def _read_input(input: Path, label_column: str | None) -> tuple[list[dict[str, Any]] | None, Any, Any]:
    """``input`` read: (events or None, matrix or None, labels or None), the labels taken out
    of the rows (``--label-column``). Bad input is a usage error naming the problem, never a
    traceback."""
    import json

    from trainer.train import LabelError, read_events, read_matrix, split_label_field

    if not input.is_file():
        raise typer.BadParameter(f"{input} is not a file")
    try:
        if input.suffix in (".jsonl", ".json"):
            try:
                events = read_events(input)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise typer.BadParameter(f"{input} is not JSON lines: {exc}") from exc
            if not events or not all(isinstance(e, dict) for e in events):
                raise typer.BadParameter(f"{input} holds no events (one JSON object per line)")
            return events, None, (split_label_field(events, label_column) if label_column else None)
        try:
            X, labels = read_matrix(input, label_column)
        except (ValueError, IndexError, KeyError, OSError) as exc:
            if isinstance(exc, LabelError):
                raise
            why = f"{input} is not a numeric matrix (.npz with X, or a CSV with a header): {exc}"
            raise typer.BadParameter(why) from exc
    except LabelError as exc:
        raise typer.BadParameter(f"--label-column {label_column}: {exc}") from exc
    if X.ndim != 2 or len(X) == 0:
        raise typer.BadParameter(f"{input} holds no rows")
    return None, X, labels


def _model_input(
    loaded: Any, input: Path, key_field: str | None, label_column: str | None = None
) -> tuple[Any, Any, Any, Any]:
    """The rows of ``input`` as ``loaded`` encodes them: (row numbers, matrix, the featurized
    events or None for a matrix, the rows' labels or None). Bad input is a usage error naming
    the problem, never a traceback."""
    import numpy as np

    from stream_ae.features.featurize import featurize_file

    if input.is_file() and input.suffix in (".jsonl", ".json") and loaded.encoder is None:
        raise typer.BadParameter("this model was trained on a matrix; give a matrix (.npz / .csv)")
    events, X, labels = _read_input(input, label_column)
    if events is not None:
        feats = featurize_file(loaded.encoder, events, key_field)
        for i, (reason, detail) in sorted(feats.rejects.items())[:20]:
            console.print(f"[yellow]row {i} skipped: {reason}: {detail}[/]")
        if not len(feats.batch.ok):
            raise typer.BadParameter(f"no event of {input} fits the model's schema (see the skipped rows above)")
        ok = feats.batch.ok
        return ok, feats.batch.X, feats, (None if labels is None else labels[ok])
    want = loaded.detector.n_features_in_
    if X.shape[1] != want:
        raise typer.BadParameter(f"{input} has {X.shape[1]} columns; the model takes {want}")
    return np.arange(len(X)), X, None, labels


def _load_model(model: Path, device: str) -> Any:
    from stream_ae.lifecycle.artifact_format import ArtifactError
    from stream_ae.lifecycle.artifacts import load_artifact

    try:
        return load_artifact(model, device=device)
    except (ArtifactError, OSError) as exc:
        raise typer.BadParameter(f"{model}: not a stream-ae model: {exc}") from exc


@app.command()
def score(
    model: Annotated[Path, typer.Argument(help="artifact directory")],
    input: Annotated[Path, typer.Argument(help="events (.jsonl) or matrix (.npz/.csv)")],
    out: Annotated[
        Path,
        typer.Option(
            help="CSV of row, score, anomaly (with an alarm section also published, incident, opens_incident; "
            "with --reconstruct the expected values)"
        ),
    ] = Path("scores.csv"),
    device: str = "auto",
    key_field: Annotated[
        str | None, typer.Option(help="the field that stands for the Kafka record key (entities keyed by it)")
    ] = None,
    reconstruct: Annotated[
        bool,
        typer.Option(
            help="also write each row's reconstruction in the input's units: for events one column per field "
            "(expected.<field>: a number, the most likely category, true/false, or a timestamp's hour of day); "
            "for a matrix one per column (expected.<index>)"
        ),
    ] = False,
    label_column: Annotated[
        str | None,
        typer.Option(
            help="a column (CSV), array (.npz) or field (JSON lines) of known labels, not a feature (as for "
            "train): also prints the false-alarm rate on the known normals and the recall of the known anomalies"
        ),
    ] = None,
) -> None:
    """Score a file offline with a saved model (no Kafka needed) and write OUT, a CSV with one
    line per row: row, score, anomaly (0/1), and with --reconstruct the reconstruction. With
    entity features the file is replayed in order from an empty state: the worker's features
    for the same events."""
    import csv

    import numpy as np

    loaded = _load_model(model, device)
    from stream_ae.alarms.stage import judge_rows

    rows, X, feats, labels = _model_input(loaded, input, key_field, label_column)
    events = feats is not None
    scores = loaded.detector.score_samples(X)
    flags = scores > loaded.detector.threshold_
    header, extra = ["row", "score", "anomaly"], None
    entity = loaded.encoder.schema.entity if loaded.encoder is not None else None
    alarms = None
    if events and entity is not None and entity.alarm is not None:  # the worker's post-score stage
        alarms = judge_rows(feats, scores, loaded.detector)
        flags = alarms.judged.alarm
        header += ["published", "incident", "opens_incident"]
    if reconstruct:
        R = loaded.detector.reconstruct(X)
        if events:
            fields = loaded.encoder.field_columns()
            header += [f"expected.{f.spec.name}" for f in fields]
            extra = [[_expected_cell(loaded.encoder.decode_field(f, r)) for f in fields] for r in R]
        else:
            header += [f"expected.{j}" for j in range(R.shape[1])]
            extra = [[f"{v:.6g}" for v in r] for r in R.tolist()]
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for n, (r, sc, f) in enumerate(zip(rows.tolist(), scores.tolist(), flags.tolist(), strict=True)):
            judged = (
                [f"{alarms.judged.published[n]:.6f}", alarms.incident(n) or "", int(alarms.judged.opens[n])]
                if alarms is not None
                else []
            )
            w.writerow([r, f"{sc:.6f}", int(f), *judged, *(extra[n] if extra is not None else [])])
    console.print(f"{int(flags.sum())} of {len(X)} rows flagged; scores in {out}")
    if alarms is not None:
        console.print(
            f"{int(alarms.judged.opens.sum())} incidents opened ('opens_incident' 1: an entity's first alarm after a "
            f"quiet cooldown, the detections to count); 'anomaly' is the published score (score likelihood when "
            f"declared) above {alarms.threshold:.4f}, after each entity's warm-up, every alarm of an incident"
        )
    if labels is not None:
        groups = {"known normals": labels == 0, "unlabelled rows": np.isnan(labels), "known anomalies": labels == 1}
        console.print(
            "; ".join(
                f"{name}: {int(flags[rows_in].sum())} of {int(rows_in.sum())} flagged ({flags[rows_in].mean():.4f})"
                for name, rows_in in groups.items()
                if rows_in.any()
            )
            + f"; target false-alarm rate {loaded.detector.threshold.rate:g}"
        )


def _expected_cell(decoded: dict[str, Any]) -> str:
    if "hour_of_day" in decoded:
        return f"{decoded['hour_of_day']:.2f}"
    v = decoded.get("value")
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@app.command()
def embed(
    model: Annotated[Path, typer.Argument(help="artifact directory")],
    input: Annotated[Path, typer.Argument(help="events (.jsonl) or matrix (.npz/.csv)")],
    out: Annotated[Path, typer.Option(help="codes.npz (arrays rows, codes) or codes.csv (row, z0, z1, ...)")] = Path(
        "codes.npz"
    ),
    device: str = "auto",
    key_field: Annotated[
        str | None, typer.Option(help="the field that stands for the Kafka record key (entities keyed by it)")
    ] = None,
) -> None:
    """Write each row's latent code (the VAE's: its posterior mean) to OUT: an .npz with the
    arrays ``rows`` (row numbers in the input) and ``codes`` (rows x latent size), or a CSV
    with the columns row, z0, z1, ..."""
    import numpy as np

    if out.suffix not in (".npz", ".csv"):
        raise typer.BadParameter(f"--out must end in .npz or .csv, not {out.suffix or 'nothing'}")
    loaded = _load_model(model, device)
    rows, X, _, _ = _model_input(loaded, input, key_field)
    codes = loaded.detector.embed(X)
    if out.suffix == ".npz":
        np.savez(out, rows=rows, codes=codes)
    else:
        with out.open("w") as fh:
            fh.write("row," + ",".join(f"z{j}" for j in range(codes.shape[1])) + "\n")
            for r, c in zip(rows.tolist(), codes.tolist(), strict=True):
                fh.write(f"{r}," + ",".join(f"{v:.6g}" for v in c) + "\n")
    console.print(f"{len(codes)} codes of size {codes.shape[1]} in {out}")


@app.command()
def synthesize(
    model: Annotated[Path, typer.Argument(help="a VAE artifact directory (stream-ae train --variant vae)")],
    count: Annotated[int, typer.Option(help="events (or rows) to generate")] = 1000,
    out: Annotated[
        Path, typer.Option(help="events.jsonl for a model trained on events; .npz or .csv for a matrix model")
    ] = Path("events.jsonl"),
    seed: int = 0,
    device: str = "auto",
    noise: Annotated[
        bool, typer.Option(help="add the decoder's noise (its residual spread per feature); --no-noise: its mean")
    ] = True,
) -> None:
    """Sample COUNT new normal-looking events from a VAE's generator and write them to OUT: one
    JSON event per line for a model trained on events (numerics in their units and inside the
    training range, categories drawn from the decoded probabilities, booleans, timestamps;
    replay them with `stream-ae produce --from OUT`), or a matrix (.npz with X, or a CSV) for
    a model trained on one. A model that is not a VAE is refused."""
    import numpy as np
    import orjson

    from stream_ae.models import NotGenerativeError

    if count < 1:
        raise typer.BadParameter("--count must be at least 1")
    loaded = _load_model(model, device)
    matrix = loaded.encoder is None
    if matrix != (out.suffix in (".npz", ".csv")) or out.suffix not in (".npz", ".csv", ".jsonl", ".json"):
        want = ".npz or .csv (a matrix model)" if matrix else ".jsonl (a model trained on events)"
        raise typer.BadParameter(f"--out must end in {want}")
    try:
        rows = loaded.detector.sample(count, seed=seed, noise=noise)
    except NotGenerativeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if matrix and out.suffix == ".npz":
        np.savez(out, X=rows.astype(np.float32))
    elif matrix:
        np.savetxt(out, rows, delimiter=",", header=",".join(f"x{j}" for j in range(rows.shape[1])), comments="")
    else:
        events = loaded.encoder.events_from_rows(rows, seed=seed)
        out.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    console.print(f"{count} generated {'rows' if matrix else 'events'} in {out}")


@app.command()
def evaluate(
    data_dir: Annotated[Path, typer.Option(help="the shared data folder")] = Path("../shared/data"),
    out: Annotated[Path, typer.Option(help="report folder (JSON, Markdown, PNG)")] = Path("reports/eval"),
    datasets: Annotated[str, typer.Option(help="comma-separated ADBench sets, 'all', or 'none' (SMD only)")] = "all",
    variants: Annotated[str, typer.Option(help="comma-separated model variants")] = "ncae,ae",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    smd: Annotated[bool, typer.Option(help="also run the SMD time-series protocol")] = True,
    options: Annotated[
        str, typer.Option(help='detector hyper-parameters as JSON, e.g. \'{"net_options": {"trim": 0}}\'')
    ] = "{}",
    baselines: Annotated[bool, typer.Option(help="also run IsolationForest, ECOD and PCA")] = True,
    labelled_anomalies: Annotated[
        str,
        typer.Option(
            help="weakly supervised protocol: comma-separated fractions of the training anomalies labelled "
            "(e.g. 0.01,0.05,0.1); compares the first variant with labels, without, and a boosted-trees baseline"
        ),
    ] = "",
    streams: Annotated[
        bool,
        typer.Option(
            help="metric streams: the synthetic host metrics (faults found, time to detection, false incidents "
            "per host and week, with the post-score stage and with raw scores; host_metrics.json/.png), then the "
            "hosts' metrics as univariate streams labelled per stream, each trained on its probation only (the "
            "held-out corpus's protocol, by the Numenta Anomaly Benchmark's rules: probation, windows, "
            "early-detection reward, one threshold per profile; host_series_SEED.json) and bursty counts and "
            "wandering levels by the same protocol (count_walk_series_SEED.json), then the SMD machines as "
            "streams (streams.json) when DATA_DIR holds them, and each SMD metric as a univariate stream by the "
            "same protocol (smd_series.json)"
        ),
    ] = False,
    contamination: Annotated[
        str,
        typer.Option(
            help="contamination sweep: comma-separated shares of the set's own anomalies put, unlabelled, into the "
            "training rows (e.g. 0,0.002,0.005,0.02,0.05); PR-AUC per score part and for IsolationForest and ECOD, "
            "on the ADBench sets and the synthetic card stream ('card' in --datasets); writes contamination.md/.png"
        ),
    ] = "",
    train_rows: Annotated[
        int,
        typer.Option(
            min=100,
            help="contamination sweep: at most this many normal training rows per set (a small trainer window: "
            "1230 rows with --contamination 0,0.004 puts five anomalies among them)",
        ),
    ] = 20_000,
) -> None:
    """Run the shared protocols against IsolationForest, ECOD and PCA; write a report."""
    import json

    from trainer.evaluate import run_evaluation, run_weak_evaluation

    try:
        hyper = json.loads(options)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--options is not JSON: {exc}") from exc
    if not isinstance(hyper, dict):
        raise typer.BadParameter("--options must be a JSON object")
    if streams:
        from trainer.evaluate import BASELINES, detector_factory
        from trainer.host_metrics import evaluate_host_metrics
        from trainer.nab import evaluate_smd_streams

        out.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in seeds.split(",")):
            hosts = evaluate_host_metrics(seed=seed, plot=out / f"host_metrics_{seed}.png", **hyper)
            (out / f"host_metrics_{seed}.json").write_text(json.dumps(hosts, indent=2))
            for way in ("published", "raw"):
                r = hosts[way]
                console.print(
                    f"host metrics seed {seed}, {way} score: {r['found']}/{hosts['faults']} faults found "
                    f"({', '.join(f'{k} {v}' for k, v in r['by_kind'].items())}), median "
                    f"{r['median_minutes_to_detect']} min to detect, {r['false_incidents_per_host_week']:.2f} false "
                    f"incidents per host and week; NAB standard {hosts['nab_standard'][way]:.1f}"
                )
        from trainer.univariate import evaluate_count_walk_series, evaluate_host_series

        variant = variants.split(",")[0]
        corpora = (
            ("host_series", "host metrics", evaluate_host_series),
            ("count_walk_series", "bursty counts and wandering levels", evaluate_count_walk_series),
        )
        for seed in (int(s) for s in seeds.split(",")):
            for stem, label, evaluate_corpus in corpora:
                corpus = evaluate_corpus(seed=seed, variant=variant, **hyper)
                (out / f"{stem}_{seed}.json").write_text(json.dumps(corpus, indent=2))
                for way, profiles in corpus.items():
                    cells = ", ".join(f"{p} {v['score']:.1f}" for p, v in profiles.items())
                    console.print(f"NAB score, {label} as univariate streams, seed {seed}, {variant} {way}: {cells}")
        if not (data_dir / "smd").exists():
            console.print(f"[yellow]{data_dir / 'smd'} not found: the SMD streams are skipped[/]")
            return
        methods = {v: detector_factory(v, device="cpu", **hyper) for v in variants.split(",")}
        if baselines:
            methods.update({k: BASELINES[k] for k in ("iforest", "pca")})
        table = evaluate_smd_streams(data_dir, methods)
        (out / "streams.json").write_text(json.dumps(table, indent=2))
        for method, profiles in table.items():
            cells = ", ".join(f"{p} {v['score']:.1f}" for p, v in profiles.items())
            console.print(f"NAB score, SMD machines as streams, {method}: {cells}")
        from trainer.univariate import evaluate_smd_series

        series = evaluate_smd_series(data_dir, seed=int(seeds.split(",")[0]), variant=variant, **hyper)
        (out / "smd_series.json").write_text(json.dumps(series, indent=2))
        for way, profiles in series.items():
            cells = ", ".join(f"{p} {v['score']:.1f}" for p, v in profiles.items())
            console.print(f"NAB score, SMD metrics as univariate streams, {variant} {way}: {cells}")
        return
    if contamination:
        from trainer.contamination import SETS, sweep, write_sweep_report

        levels = _shares(contamination, "--contamination", "[0, 0.5)", lambda f: 0 <= f < 0.5)

        def said(r: Any) -> None:
            console.print(
                f"{r.dataset:12s} seed {r.seed} {r.level:<6g} (reached {r.reached:.4f}) {r.method:15s} "
                f"PR {r.pr_auc:.3f} ROC {r.roc_auc:.3f}"
            )

        sets = SETS if datasets == "all" else datasets.split(",")
        results = sweep(
            data_dir, sets, levels, [int(s) for s in seeds.split(",")], hyper, on_result=said, max_train=train_rows
        )
        write_sweep_report(out, results, hyper, max_train=train_rows)
        console.print((out / "contamination.md").read_text())
        return
    if labelled_anomalies:
        fractions = _shares(labelled_anomalies, "--labelled-anomalies", "(0, 1]", lambda f: 0 < f <= 1)
        seed_list = [int(s) for s in seeds.split(",")]
        run_weak_evaluation(data_dir, out, datasets, variants.split(",")[0], seed_list, fractions, console, hyper)
        return
    run_evaluation(
        data_dir,
        out,
        datasets,
        variants.split(","),
        [int(s) for s in seeds.split(",")],
        smd,
        console,
        options=hyper,
        baselines=baselines,
    )


def _shares(text: str, option: str, interval: str, within: Any) -> list[float]:
    """A comma-separated list of numbers for ``option``, each ``within`` ``interval``, or a
    usage error saying what is wrong."""
    try:
        values = [float(f) for f in text.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(f"{option} takes comma-separated numbers: {exc}") from exc
    if not all(within(f) for f in values):
        raise typer.BadParameter(f"{option} values lie in {interval}")
    return values


def _run_until_signal(make: Any) -> None:
    """Run ``make(stop_event)`` until SIGINT/SIGTERM sets the event."""
    import asyncio
    import signal

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await make(stop)

    asyncio.run(runner())


@app.command()
def trainer(
    once: Annotated[bool, typer.Option(help="one gated run, then exit")] = False,
) -> None:
    """Run the trainer service (periodic + drift-triggered refresh; STREAM_AE_* settings)."""
    import asyncio
    import logging

    from stream_ae.operation.runtime import default_trainer_threads, limit_threads
    from stream_ae.settings import Settings

    settings = Settings()
    limit_threads(settings.trainer_threads or default_trainer_threads(), 1, settings.trainer_nice)
    from trainer.service import TrainerService

    logging.basicConfig(level=settings.log_level, format="[%(asctime)s] [trainer] %(levelname)s %(message)s")
    from stream_ae.operation.logs import quiet_retriable_kafka_errors

    quiet_retriable_kafka_errors()
    service = TrainerService(settings)
    if once:
        result = asyncio.run(service.run_once("manual"))
        console.print(f"published: {result.published or 'nothing'} ({result.reason}); events {result.n_events}")
        if result.reason == "too_few_events":
            console.print(
                f"[yellow]the window from {', '.join(settings.input_topics)} held {result.n_events} usable events: "
                "check STREAM_AE_INPUT_TOPICS and that producers write there, or wait for more traffic[/]"
            )
            raise typer.Exit(2)
        return
    _run_until_signal(service.run)


@app.command()
def produce(
    topic: Annotated[
        str | None, typer.Option(help="topic to write to (default: the first of STREAM_AE_INPUT_TOPICS)")
    ] = None,
    count: Annotated[int, typer.Option(help="events to send (0: stream until Ctrl-C)")] = 10_000,
    rate: Annotated[float, typer.Option(help="events per second (0: as fast as possible)")] = 1000.0,
    anomaly_rate: Annotated[float, typer.Option(help="share of injected frauds")] = 0.005,
    seed: int = 0,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="replay this JSON-lines file instead (each line sent unchanged; --count 0: all of it, "
            "else its first COUNT lines)",
        ),
    ] = None,
    key_field: Annotated[str | None, typer.Option(help="with --from: the field that keys each record")] = "card",
    partitions: Annotated[int, typer.Option(help="partitions of the topic when it does not exist yet")] = 4,
) -> None:
    """Send synthetic card transactions with injected frauds, or replay an event file (a demo, a
    load test: `stream-ae synthesize` writes one), to TOPIC on STREAM_AE_BOOTSTRAP_SERVERS."""
    import asyncio

    from stream_ae.settings import Settings
    from stream_ae.tools.produce import file_payloads, send_events, send_raw, stream_forever
    from stream_ae.tools.synthetic import transactions

    settings = Settings()
    kw = settings.kafka_client_kwargs()
    topic = topic or settings.input_topics[0]
    console.print(f"sending to topic {topic!r} on {settings.bootstrap_servers}")
    from stream_ae.kafka.admin import ensure_topics

    asyncio.run(ensure_topics(kw, {topic: partitions}))  # made here, not by auto-creation with its warning
    if from_file is not None:
        if not from_file.is_file():
            raise typer.BadParameter(f"{from_file} is not a file")
        payloads = file_payloads(from_file, key_field)
        if not payloads:
            raise typer.BadParameter(f"{from_file} holds no lines to send")
        payloads = payloads[:count] if count else payloads
        sent = asyncio.run(send_raw(kw, topic, payloads, rate=rate or None))
        console.print(f"sent {sent} records from {from_file} to {topic}")
        return
    if count:
        events, labels = transactions(count, seed=seed, anomaly_rate=anomaly_rate)
        asyncio.run(send_events(kw, topic, events, rate=rate or None))
        console.print(f"sent {count} events ({int(labels.sum())} injected anomalies) to {topic}")
        return
    _run_until_signal(
        lambda stop: stream_forever(kw, topic, rate=rate, anomaly_rate=anomaly_rate, seed=seed, stop=stop)
    )


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="the topic to read: anomalies, incidents, events.dlq, ...")],
    count: Annotated[int, typer.Option(help="print the last COUNT records (0: all)")] = 10,
    wait_s: Annotated[float, typer.Option(help="stop once the topic has been quiet this long")] = 2.0,
) -> None:
    """Print a topic's records as JSON lines, oldest first (read-committed, from the start, no
    consumer group): what a worker wrote, without a Kafka client of your own."""
    import asyncio

    from stream_ae.settings import Settings
    from stream_ae.tools.audit import read_all

    settings = Settings()
    records = asyncio.run(read_all(settings.bootstrap_servers, [topic], idle_s=wait_s, timeout_s=max(wait_s, 30.0)))
    shown = records[-count:] if count else records
    for r in shown:
        typer.echo((r.value or b"null").decode("utf-8", "replace"))
    console.print(f"[dim]{len(shown)} of {len(records)} records of {topic}[/]", highlight=False)


@app.command()
def feedback(
    event_id: Annotated[str, typer.Argument(help="the event's id, as its anomaly record's event_id gives it")],
    label: Annotated[str, typer.Option(help="anomaly (a confirmed fraud) or normal (a false alarm)")],
    source: Annotated[
        str | None, typer.Option(help="where the event lies, topic:partition:offset (an anomaly record's source)")
    ] = None,
    by: Annotated[str | None, typer.Option(help="who decided (default: the user running this)")] = None,
    note: Annotated[str | None, typer.Option(help="free text kept with the verdict")] = None,
) -> None:
    """Send a verdict on one event to STREAM_AE_FEEDBACK_TOPIC; the trainer learns from it."""
    import asyncio
    import getpass
    import time

    from stream_ae.input.source import Source
    from stream_ae.input.verdicts import VerdictError, verdict_record
    from stream_ae.settings import Settings

    settings = Settings()
    if not settings.feedback_topic:
        raise typer.BadParameter("STREAM_AE_FEEDBACK_TOPIC is unset: feedback is off")
    coords = Source.parse(source) if source is not None else None
    if source is not None and coords is None:
        raise typer.BadParameter(f"--source is topic:partition:offset, got {source!r}")
    try:
        record = verdict_record(event_id, label, by=by or getpass.getuser(), at=time.time(), source=coords, note=note)
    except VerdictError as exc:
        raise typer.BadParameter(exc.detail) from exc
    asyncio.run(_send_verdict(settings, record))
    console.print(f"verdict '{label}' on {event_id} sent to {settings.feedback_topic}")


async def _send_verdict(settings: Any, record: dict[str, Any]) -> None:
    from aiokafka import AIOKafkaProducer

    from stream_ae.input.verdicts import verdict_bytes
    from stream_ae.kafka.admin import ensure_topics

    kw = settings.kafka_client_kwargs()
    await ensure_topics(kw, {settings.feedback_topic: 1}, compacted={settings.feedback_topic})
    producer = AIOKafkaProducer(**kw, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.feedback_topic, verdict_bytes(record), key=record["event_id"].encode())
    finally:
        await producer.stop()


RegistryDir = Annotated[Path | None, typer.Option("--dir", help="registry root (default: STREAM_AE_MODEL_DIR)")]


def _registry(path: Path | None) -> Any:
    from stream_ae.lifecycle.registry import Registry
    from stream_ae.settings import Settings

    return Registry(path or Settings().model_dir)


@models_app.command("list")
def models_list(registry_dir: RegistryDir = None) -> None:
    """Versions in the registry, oldest first; * marks LATEST."""
    reg = _registry(registry_dir)
    latest = reg.latest()
    for v in reg.versions():
        mark = "*" if v.version == latest else " "
        print(f"{mark} {v.version}  created {v.created:.0f}  sha256 {v.manifest_sha256[:12]}")


@models_app.command("show")
def models_show(version: Annotated[str | None, typer.Argument()] = None, registry_dir: RegistryDir = None) -> None:
    """A version's manifest summary (default: LATEST)."""
    import json

    from stream_ae.lifecycle.artifacts import read_manifest

    reg = _registry(registry_dir)
    manifest, sha = read_manifest(reg.path_of(version or reg.latest() or ""))
    summary = {k: manifest.get(k) for k in ("version", "variant", "created", "metrics", "data_fingerprint", "files")}
    summary["threshold"] = manifest["detector"]["threshold"]["value"]
    summary["manifest_sha256"] = sha
    print(json.dumps(summary, indent=2))


@models_app.command("promote")
def models_promote(version: str, registry_dir: RegistryDir = None) -> None:
    """Point LATEST at VERSION (workers follow within seconds)."""
    _registry(registry_dir).promote(version)
    console.print(f"LATEST -> {version}")


@models_app.command("rollback")
def models_rollback(registry_dir: RegistryDir = None) -> None:
    """Point LATEST at the version before the current one."""
    console.print(f"LATEST -> {_registry(registry_dir).rollback()}")


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="where the demo keeps Kafka data, models and logs")] = Path(".demo"),
    rate: Annotated[float, typer.Option(help="events per second from the producer")] = 2000.0,
    anomaly_rate: Annotated[float, typer.Option(help="share of injected frauds")] = 0.005,
    duration: Annotated[float, typer.Option(help="stop after this many seconds (0: until Ctrl-C)")] = 0.0,
    report: Annotated[
        bool,
        typer.Option(
            help="print a line a minute (also to HOME/report.txt): the false-alarm rate, recall and precision of "
            "the events sent that minute, by the producer's labels"
        ),
    ] = False,
    stream: Annotated[
        str, typer.Option(help="card: payments with frauds and analyst verdicts; metrics: host metrics with faults")
    ] = "card",
    hosts: Annotated[int, typer.Option(help="--stream metrics: simulated hosts")] = 30,
    speed: Annotated[float, typer.Option(help="--stream metrics: simulated seconds per second")] = 1440.0,
    faults_per_host_week: Annotated[float, typer.Option(help="--stream metrics: injected faults")] = 1.0,
) -> None:
    """Local broker, initial model, worker, trainer and a producer, with a live view. With
    ``--stream metrics``: host metrics with injected faults, incidents against faults."""
    if stream == "metrics":
        from stream_ae.tools.metric_demo import run_metric_demo

        run_metric_demo(home / "metrics", hosts, speed, faults_per_host_week, duration or None)
        return
    if stream != "card":
        raise typer.BadParameter(f"--stream is card or metrics, not {stream!r}")
    from stream_ae.tools.demo import run_demo

    run_demo(home, rate, anomaly_rate, duration or None, report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
