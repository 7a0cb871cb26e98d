"""Who may talk to the evaluator: the bearer-token middleware and the refusal to serve an unprotected
non-loopback address.

The token is checked in ASGI middleware, from the request's headers alone, before any byte of the body is
received: an unauthenticated request costs the same small time and memory whatever it declares or
streams. Every path but `/healthz` needs it, the API document (`/docs`, `/redoc`, `/openapi.json`)
included.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

TOKEN_ENV = "CHEXRL_EVALUATOR_TOKEN"
TOKEN_FILE_ENV = "CHEXRL_EVALUATOR_TOKEN_FILE"
OPEN_PATHS = frozenset({"/healthz"})


def read_token(environ) -> str | None:
    """The configured token, or None; a blank value counts as none (it would accept 'Bearer ').

    `CHEXRL_EVALUATOR_TOKEN_FILE` names a file holding it (the deployment's way: a secret file that only
    the processes that read it see), else `CHEXRL_EVALUATOR_TOKEN` holds it. A named file that cannot be
    read, or is blank, is an error: a service wired for a token must not run without one."""
    path = (environ.get(TOKEN_FILE_ENV) or "").strip()
    if path:
        try:
            token = open(path, encoding="utf-8").read().strip()  # noqa: SIM115 - read at once
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{TOKEN_FILE_ENV}={path} cannot be read: {exc}") from exc
        if not token:
            raise ValueError(f"{TOKEN_FILE_ENV}={path} is empty: it must hold the evaluator's token")
        return token
    token = (environ.get(TOKEN_ENV) or "").strip()
    return token or None


def is_loopback(host: str) -> bool:
    if host.strip().lower() in {"localhost", "localhost.localdomain", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it is treated as exposed


class InsecureBindError(ValueError):
    """Serving a non-loopback address without a token, and without --insecure."""


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    if token is None and not insecure and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve {host!r} without a token: anyone who can reach it could write every run's "
            f'nuanced-reward state. Set {TOKEN_ENV} (e.g. `python -c "import secrets; '
            f'print(secrets.token_hex(32))"`), bind 127.0.0.1, or pass --insecure if you mean it.'
        )


def bearer_matches(headers, expected: bytes) -> bool:
    """Whether the ASGI `headers` carry `Authorization: Bearer <expected>` (constant-time compare)."""
    presented = b""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() == b"bearer":
                presented = credential.strip()
            break
    return hmac.compare_digest(presented, expected)


class BearerAuth:
    """Pure ASGI middleware: 401 unless `Authorization: Bearer <token>` matches (constant-time compare)."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.expected is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if bearer_matches(scope["headers"], self.expected):
            return await self.app(scope, receive, send)
        # Answered without calling `receive`: the body is never read. `connection: close` because the
        # unread body would otherwise be taken for the next request on this connection.
        body = json.dumps({"detail": "missing or wrong bearer token"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
