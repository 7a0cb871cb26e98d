"""The uvicorn server the evaluator runs under: its protocol with deadlines (connections.py) and the
settings' limits. One function, so that the command and the tests serve alike."""

from __future__ import annotations

import uvicorn

from services.evaluator.connections import guarded_protocol
from services.evaluator.settings import EvaluatorSettings


def server_config(application, settings: EvaluatorSettings, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's config for `application`: no `limit_concurrency` (which would count idle connections;
    the application limits requests in flight), and the header, body and connection bounds."""
    protocol = guarded_protocol(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections)
    return uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        http=protocol,
        ws="none",  # no WebSocket routes: an upgrade request is plain HTTP to the application
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=max(1, round(settings.header_timeout_s)),
    )
