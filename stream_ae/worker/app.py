"""The Faust application: lifecycle, CLI, web health endpoint; the hot path is a service.

``stream-ae worker`` and ``faust -A stream_ae.worker.app worker`` both run :data:`app`, built from
the environment's :class:`~stream_ae.settings.Settings`. Tests and embedders call
:func:`create_app` with their own settings.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust
from faust.web import Request, Response, View

from stream_ae.operation.metrics import WorkerMetrics
from stream_ae.settings import Settings
from stream_ae.worker import BatchWorker


def _credentials(settings: Settings) -> Any:
    kw = settings.kafka_client_kwargs()
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(kw["ssl_context"])
    if settings.security_protocol.startswith("SASL"):
        mech = settings.sasl_mechanism or "PLAIN"
        ctx: ssl.SSLContext | None = kw.get("ssl_context")
        cls = faust.SASLCredentials
        return cls(
            username=settings.sasl_username,
            password=kw["sasl_plain_password"],
            mechanism=mech,
            ssl_context=ctx,
        )
    return None


def create_app(settings: Settings | None = None) -> tuple[faust.App, BatchWorker]:
    """A Faust app running one :class:`BatchWorker` with its metrics exporter."""
    settings = settings or Settings()
    metrics = WorkerMetrics()
    datadir = settings.state_dir / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)  # Faust expects it to exist
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        autodiscover=False,
        store="memory://",
        datadir=str(datadir),
        topic_replication_factor=1,
        # Faust's own consumer group must notice a dead worker as fast as the hot path's does
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_ms / 5000),
        loghandlers=[],
    )
    worker = BatchWorker(settings, metrics, loop=None)
    app._extra_services.append(worker)  # type: ignore[arg-type]  # an instance is accepted too

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            model = worker.model
            body = {
                "ready": worker.ready and model is not None,
                "model_version": model.version if model else None,
                "device": str(model.scorer.device) if model else None,
            }
            return self.json(body, status=200 if body["ready"] else 503)

    async def _serve_metrics() -> None:
        metrics.serve(settings.metrics_host, settings.metrics_port)

    app.task(_serve_metrics)

    return app, worker


def __getattr__(name: str) -> Any:
    """``faust -A stream_ae.worker.app`` reads ``app``: built from the environment on first access."""
    if name == "app":
        global _app
        if _app is None:
            _app = create_app()[0]
        return _app
    raise AttributeError(name)


_app: faust.App | None = None
