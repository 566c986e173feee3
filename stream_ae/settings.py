"""One typed settings object for every stream-ae process, read from ``STREAM_AE_*``.

Every knob has one name: the field ``batch_max_size`` is ``STREAM_AE_BATCH_MAX_SIZE`` in the
environment and appears under that name in README.md. An optional env file is read when
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
        env_prefix="STREAM_AE_", env_file=os.environ.get("STREAM_AE_ENV_FILE"), extra="ignore"
    )

    # Kafka connection
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    # topics and group
    input_topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["events"])
    output_topic: str = "anomalies"
    dead_letter_topic: str = "events.dlq"
    scores_topic: str | None = None
    # incident records (stream-ae.incident/1), written when the model's schema declares an
    # alarm cooldown (entity: alarm: cooldown:)
    incidents_topic: str = "incidents"
    control_topic: str = "stream-ae.models"
    # analysts' verdicts (compacted, keyed by event id; stream-ae.verdict/1); the trainer learns
    # from them. None: no feedback
    feedback_topic: str | None = "stream-ae.feedback"
    group_id: str = "stream-ae-worker"
    session_timeout_ms: int = Field(10_000, ge=6_000)  # how fast a dead worker's partitions move
    app_id: str = "stream-ae"
    # the entity state's changelog (compacted, one partition per input partition); None:
    # "<app_id>-entity-changelog"
    entity_changelog_topic: str | None = None
    # Faust's own state (its table and app-data folder, empty with the in-memory store); kept
    # out of the working directory, which may be read-only in a container
    state_dir: Path = Path(tempfile.gettempdir()) / "stream-ae"
    # stable per worker instance (pod name): the exactly-once producer's transactional id, so
    # a restarted instance fences its dead predecessor and aborts its open transaction
    instance_id: str = Field(default_factory=socket.gethostname)

    # hot path
    batch_max_size: int = Field(2048, ge=1)
    batch_max_wait_ms: int = Field(50, ge=0)
    max_message_bytes: int = Field(1_048_576, ge=64)
    top_k_features: int = Field(3, ge=0)
    scores_include_code: bool = False  # each all-scores record carries the event's latent code
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    device: Device = "auto"
    # the worker's torch intra-op threads (and BLAS threads): 1 leaves the other cores to its
    # event loop, the broker and the trainer on a shared host
    torch_threads: int = Field(1, ge=1)
    torch_interop_threads: int = Field(1, ge=1)

    # model registry
    model_dir: Path = Path("models")
    model_version: str | None = None  # pin a version; None follows the registry's latest

    # observability
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    log_level: str = "INFO"

    # trainer
    trainer_interval_s: float = Field(900.0, gt=0)
    trainer_window_events: int = Field(50_000, ge=100)
    # events read before the window only to warm the entity state (not trained on; no effect
    # without entity features)
    trainer_warmup_events: int = Field(10_000, ge=0)
    trainer_exclude_anomalies: bool = True
    trainer_warm_start: bool = True
    trainer_max_steps: int = Field(1500, ge=10)  # optimiser steps per refresh (the training budget)
    # the share of labelled events held back from training for the gate's labelled precision
    # and recall (none with fewer than five labels)
    trainer_feedback_holdout: float = Field(0.3, ge=0.0, lt=1.0)
    # the trainer's device: the CPU by default, leaving the GPU to the workers on a shared host
    trainer_device: Device = "cpu"
    trainer_bf16: bool = False  # bf16 autocast for the networks' layers while training (for CUDA)
    trainer_threads: int | None = Field(None, ge=1)  # None: half the cores
    trainer_nice: int = Field(10, ge=0, le=19)  # scheduling priority below the worker's
    trainer_metrics_port: int = 9109
    trainer_min_interval_s: float = Field(60.0, ge=0)
    drift_report_interval_s: float = Field(30.0, gt=0)
    registry_keep: int = Field(5, ge=1)
    drift_psi_threshold: float = Field(0.25, gt=0)
    drift_window_events: int = Field(20_000, ge=100)
    target_false_alarm_rate: float = Field(0.001, gt=0, lt=0.5)
    variant: str = "ncae"

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

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
