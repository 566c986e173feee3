"""One typed settings object for every stream-ae process, read from ``STREAM_AE_*``.

Every knob has one name: the field ``batch_max_size`` is ``STREAM_AE_BATCH_MAX_SIZE`` in the
environment. Each field's docstring is its description, from which the settings reference
(``docs/reference/settings.md``) is generated. An optional env file is read when
``STREAM_AE_ENV_FILE`` names one (environment variables win over the file).

Example:
    >>> s = Settings(input_topics=["payments"], batch_max_size=512)
    >>> s.batch_max_size, s.input_topics
    (512, ['payments'])
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Device = Literal["auto", "cuda", "cpu"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """Configuration of the worker, the trainer and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_AE_",
        env_file=os.environ.get("STREAM_AE_ENV_FILE"),
        extra="ignore",
        use_attribute_docstrings=True,  # each field's docstring is its description (docs/reference/settings.md)
    )

    # Kafka connection
    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated."""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    """``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``."""
    ssl_cafile: Path | None = None
    """PEM file of the certificate authority (SSL)."""
    ssl_certfile: Path | None = None
    """PEM file of the client certificate (SSL)."""
    ssl_keyfile: Path | None = None
    """PEM file of the client key (SSL)."""
    sasl_mechanism: SaslMechanism | None = None
    """``PLAIN`` (when SASL and unset), ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``."""
    sasl_username: str | None = None
    """SASL user."""
    sasl_password: SecretStr | None = None
    """SASL password: a secret, never logged or exported."""

    # topics and group
    input_topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["events"])
    """Input topics, comma-separated (one topic with entity features)."""
    output_topic: str = "anomalies"
    """Anomaly records (``stream-ae.anomaly/2``)."""
    dead_letter_topic: str = "events.dlq"
    """Dead letters (``stream-ae.dead-letter/1``): every record that could not be scored, with the reason."""
    scores_topic: str | None = None
    """Optional: a ``stream-ae.score/1`` record for every scored event."""
    incidents_topic: str = "incidents"
    """Incident records (``stream-ae.incident/2``: opened, updated, closed), keyed by incident id; created
    compacted. Written when the model's schema declares an alarm cooldown."""
    control_topic: str = "stream-ae.models"
    """Compacted: model announcements and drift reports."""
    feedback_topic: str | None = "stream-ae.feedback"
    """Compacted, keyed by event id: analysts' verdicts (``stream-ae.verdict/1``) the trainer learns from; empty
    turns feedback off."""
    group_id: str = "stream-ae-worker"
    """The workers' consumer group (not the app id: Faust uses that group)."""
    session_timeout_ms: int = Field(10_000, ge=6_000)
    """How soon a dead worker's partitions move to the others (at least 6000)."""
    app_id: str = "stream-ae"
    """The Faust app id."""
    entity_changelog_topic: str | None = None
    """The entity state's compacted changelog, one partition per input partition; unset:
    ``<app id>-entity-changelog``."""
    state_dir: Path = Path(tempfile.gettempdir()) / "stream-ae"
    """Faust's own state folder (``<state dir>/<app id>``), out of the working directory, which may be read-only
    in a container."""
    instance_id: str = Field(default_factory=socket.gethostname)
    """Stable per worker instance (the pod name; default: the host name): the exactly-once producer's
    transactional id, so a restarted instance fences its dead predecessor."""

    # hot path
    batch_max_size: int = Field(2048, ge=1)
    """Records in a micro-batch at most."""
    batch_max_wait_ms: int = Field(50, ge=0)
    """How long a fetch waits to fill a batch."""
    max_message_bytes: int = Field(1_048_576, ge=64)
    """Larger input records are dead-lettered as ``oversized``."""
    top_k_features: int = Field(3, ge=0)
    """Fields named in each anomaly record, with their observed and expected values."""
    scores_include_code: bool = False
    """Each all-scores record carries the event's latent code (``code``; the VAE's posterior mean)."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """``at_least_once``, or ``exactly_once`` (Kafka transactions)."""
    commit_interval_ms: int = Field(1000, ge=0)
    """``at_least_once`` with entity state: how often the input offsets are committed and the
    entity changelog written, one record per entity changed since the last time (Kafka Streams'
    record cache). Longer: fewer changelog records, more events read again after a crash. 0:
    after every batch. ``exactly_once`` commits every batch in its transaction."""
    device: Device = "auto"
    """The worker's device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``."""
    torch_threads: int = Field(1, ge=1)
    """The worker's torch intra-op threads (and BLAS threads): one leaves the other cores to its event loop, the
    broker and the trainer on a shared host."""
    torch_interop_threads: int = Field(1, ge=1)
    """The worker's torch inter-op threads."""

    # model registry
    model_dir: Path = Path("models")
    """The model registry's root folder."""
    model_version: str | None = None
    """Pin a model version; unset, the worker follows the registry's LATEST and the announcements."""

    # observability
    metrics_host: str = "127.0.0.1"
    """Where the worker serves ``/metrics``."""
    metrics_port: int = 9108
    """The worker's ``/metrics`` port."""
    web_host: str = "127.0.0.1"
    """Where the worker serves ``/healthz`` (Faust's web server)."""
    web_port: int = 6066
    """The worker's ``/healthz`` port."""
    log_level: str = "INFO"
    """Log level of every process."""

    # trainer
    trainer_interval_s: float = Field(900.0, gt=0)
    """Seconds between scheduled retrains."""
    trainer_window_events: int = Field(50_000, ge=100)
    """The newest events the trainer reads per run."""
    trainer_warmup_events: int = Field(10_000, ge=0)
    """Events read before the window only to warm the entity state (not trained on; no effect without entity
    features)."""
    trainer_exclude_anomalies: bool = True
    """Leave out of training what the champion flags."""
    trainer_warm_start: bool = True
    """Start the challenger from the champion's weights."""
    trainer_max_steps: int = Field(1500, ge=10)
    """Optimiser steps per refresh at most (the training budget)."""
    trainer_neighbour_sets: int = Field(32, ge=0)
    """The ``ncae`` variant's neighbour part: in how many random samples of 64 training rows a score measures how
    isolated an event is. Its share of the CPU's scoring time grows with it: 16 about halves it at about the same
    quality on the shared sets, 8 cuts it to a third at a small loss under contamination (docs/concepts/model.md); 0
    drops the part."""
    trainer_feedback_holdout: float = Field(0.3, ge=0.0, lt=1.0)
    """Share of the labelled events held back from training for the gate's labelled precision and recall (none
    with fewer than five labels)."""
    trainer_device: Device = "cpu"
    """The trainer's device: ``cpu`` leaves the GPU to the workers; ``auto`` or ``cuda`` trains on it."""
    trainer_bf16: bool = False
    """bf16 autocast for the networks' layers while training (for CUDA; the exact parts stay float32)."""
    trainer_threads: int | None = Field(None, ge=1)
    """The trainer's torch (and BLAS) threads; unset: half the cores."""
    trainer_nice: int = Field(10, ge=0, le=19)
    """The trainer's scheduling priority below the worker's (0-19, as ``nice``)."""
    trainer_metrics_port: int = 9109
    """The trainer's ``/metrics`` port."""
    trainer_min_interval_s: float = Field(60.0, ge=0)
    """No two trainer runs closer than this (drift storms); a stop ends the wait."""
    drift_report_interval_s: float = Field(30.0, gt=0)
    """At most one drift report per interval."""
    registry_keep: int = Field(5, ge=1)
    """Model versions kept in the registry."""
    drift_psi_threshold: float = Field(0.25, gt=0)
    """PSI of recent scores against the calibration that triggers a retrain."""
    drift_window_events: int = Field(20_000, ge=100)
    """Scores in the drift window."""
    target_false_alarm_rate: float = Field(0.001, gt=0, lt=0.5)
    """The trainer's calibration target: the share of normal events above the threshold."""
    variant: str = "ncae"
    """The trainer's model variant."""

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def coalesces_changelog(self) -> bool:
        """Whether entity state changes are held and written once per commit interval (with the
        offset commit), rather than carried by each batch."""
        return self.processing_guarantee == "at_least_once" and self.commit_interval_ms > 0

    @property
    def changelog_topic(self) -> str:
        """The entity changelog's topic name."""
        return self.entity_changelog_topic or f"{self.app_id}-entity-changelog"

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments shared by every aiokafka client of this process."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kwargs
