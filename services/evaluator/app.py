"""The evaluator service: reward scoring (`/score`) and data-set metrics (`/evaluate`) over HTTP.

Every number comes from chexrl.core (score_completion, completion_metrics): the trainer and this service
cannot disagree. Client input never causes a 5xx: the bearer token is checked before the body is read
(401, security.py), bodies are size-limited before they are read (413), validated by pydantic models
whose errors name the field (422, at most `max_validation_errors` listed, every string echoed as valid
JSON), and gold labels are checked against the schema with the item index in the error. The run state
(nuanced windows) is the only part that can fail on the server's side: a 503 naming the database, or a
507 when its disk is full, while the hard reward and /evaluate keep working. Past `max_concurrency`
requests in flight a request gets 503 at once (/healthz excepted); connections.py bounds the rest.
"""

import json
import math
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import orjson
from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from chexrl.core.metrics import DatasetMetrics, completion_metrics
from chexrl.core.run_ids import RUN_ID_DESCRIPTION, RUN_ID_MAX_LENGTH, RUN_ID_PATTERN
from chexrl.core.schemas import SCHEMAS, TRAINING_SCHEMA, get_schema
from chexrl.core.scoring import ScoredCompletion, score_completion
from services.evaluator.body_limit import BodySizeLimit
from services.evaluator.connections import RequestLimit
from services.evaluator.security import OPEN_PATHS, BearerAuth, bearer_matches
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.window_store import StateFull, StateUnavailable, WindowStore, disk_free_bytes


def _valid_unicode(text: str) -> str:
    # JSON's \ud800-style escapes can spell lone surrogates, which Python decodes but which cannot be
    # encoded as UTF-8 (SQLite, the response): refused here with the field's name, never a 500 later.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode: lone surrogate {text[exc.start]!a} at character {exc.start}"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
# Separate objects for the body and the path: FastAPI marks a path parameter's FieldInfo required in
# place, which would make the (optional) body field required in the OpenAPI document too.
RunIdBody = Annotated[
    str,
    StringConstraints(min_length=1, max_length=RUN_ID_MAX_LENGTH, pattern=RUN_ID_PATTERN),
    Field(description=RUN_ID_DESCRIPTION),
]
RunIdPath = Annotated[
    str,
    Path(min_length=1, max_length=RUN_ID_MAX_LENGTH, pattern=RUN_ID_PATTERN, description=RUN_ID_DESCRIPTION),
]


# Any text, "/" and new lines included, so that every run id reaches the pattern check (a 422 that names
# it) instead of missing the route (404): Starlette's own `path` convertor stops at a new line.
class _AnyText(Convertor):
    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyText())
_ECHO_CHARS = 200  # longest string a 422 echoes back (a 16 KiB completion is not worth returning)


def _models(settings: EvaluatorSettings):
    """Request models whose limits come from the settings."""
    CompletionText = Annotated[Text, Field(max_length=settings.max_completion_chars)]
    LabelText = Annotated[Text, Field(max_length=100)]
    LabelList = Annotated[list[LabelText], Field(max_length=settings.max_labels_per_item)]

    class Strict(BaseModel):
        # strict: "3" is not an int and 1 is not a string; JSON types must be exactly the schema's
        model_config = ConfigDict(extra="forbid", strict=True)

    class ScoreRequestItem(Strict):
        completion: CompletionText
        labels: LabelList
        num_tokens: Annotated[int, Field(ge=0, le=10_000_000)] | None = None

    class ScoreRequest(Strict):
        reward: Literal["hard", "nuanced"]
        run_id: RunIdBody | None = None
        request_id: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
        items: Annotated[
            list[ScoreRequestItem], Field(min_length=1, max_length=settings.max_items_per_request)
        ]

    class EvaluateItem(Strict):
        completion: CompletionText
        labels: LabelList
        num_tokens: Annotated[int, Field(ge=0, le=10_000_000)] | None = None

    class EvaluateRequest(Strict):
        schema_: Literal["chexpert14", "nih9", "nih10"] = Field(alias="schema")
        items: Annotated[list[EvaluateItem], Field(min_length=1, max_length=settings.max_items_per_request)]

    class WindowBody(Strict):
        window: Annotated[list[Annotated[list[LabelText], Field(max_length=14)]], Field(max_length=100_000)]

    return ScoreRequest, EvaluateRequest, WindowBody


class ScoreResponse(BaseModel):
    rewards: list[float]
    items: list[ScoredCompletion]


class WindowOut(BaseModel):
    run_id: str
    window: list[list[str]]


def _canonical_labels(items, schema_name: str) -> list[frozenset[str]]:
    """Gold labels in canonical spelling; an unknown one is a 422 naming the item and the label."""
    schema = SCHEMAS[schema_name]
    golds, errors = [], []
    for i, item in enumerate(items):
        gold = set()
        for j, text in enumerate(item.labels):
            label = schema.canonical(text)
            if label is None:
                errors.append(
                    {
                        "type": "value_error",
                        "loc": ["body", "items", i, "labels", j],
                        "msg": f"unknown label {text!r} for schema {schema_name}; expected one of {list(schema.labels)}",
                        "input": text,
                    }
                )
            else:
                gold.add(label)
        golds.append(frozenset(gold))
    if errors:
        raise RequestValidationError(errors)
    return golds


class Instrument:
    """Pure ASGI middleware counting requests and their latency per route template."""

    def __init__(self, app, metrics: "_Metrics") -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chexrl_evaluator_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "chexrl_evaluator_request_seconds",
            "Request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.scored = Counter(
            "chexrl_evaluator_completions_scored_total",
            "Completions scored",
            ["reward"],
            registry=self.registry,
        )
        self.invalid = Counter(
            "chexrl_evaluator_invalid_completions_total",
            "Completions that failed the format",
            ["reward"],
            registry=self.registry,
        )
        self.cached_runs = Gauge(
            "chexrl_evaluator_cached_runs", "Nuanced windows held in memory", registry=self.registry
        )


def _echo(value):
    """A value as a 422 may echo it: valid UTF-8 (lone surrogates spelled out), finite, and short."""
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS] + f"... ({len(text)} characters)"
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 2**53 else _echo(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no inf or nan
    return _echo(repr(value))  # a list or object: its start, as text


def validation_error_body(errors: list[dict], limit: int) -> bytes:
    """The 422's JSON: the first `limit` errors (each JSON-safe), then one entry counting the rest."""
    shown = []
    for err in errors[:limit]:
        out = {
            "type": _echo(str(err.get("type", "value_error"))),
            "loc": [part if isinstance(part, int) else _echo(str(part)) for part in err.get("loc", ())],
            "msg": _echo(str(err.get("msg", ""))),
        }
        if "input" in err:
            out["input"] = _echo(err["input"])
        if err.get("ctx"):
            out["ctx"] = {_echo(str(k)): _echo(v) for k, v in err["ctx"].items()}
        shown.append(out)
    if len(errors) > limit:
        shown.append(
            {
                "type": "too_many_errors",
                "loc": ["body"],
                "msg": f"{len(errors) - limit} more errors not listed ({len(errors)} in all)",
            }
        )
    return json.dumps({"detail": shown}, allow_nan=False).encode()


_ERRORS = {
    400: {"description": "The body is not JSON, or Content-Length is invalid"},
    401: {"description": "Missing or wrong bearer token (when the evaluator has one)"},
    413: {"description": "Body over max_body_bytes (the connection is closed)"},
    503: {"description": "All request slots busy (max_concurrency): retry shortly"},
}
_STATE_ERRORS = {
    503: {"description": "The run-state database is unusable (the detail names it), or all slots busy"},
    507: {"description": "No space for the run state (the detail says what is free); DELETE still works"},
}


def _json_error(status: int, detail) -> Response:
    if isinstance(detail, str):  # valid UTF-8 whatever it quotes
        detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return Response(json.dumps({"detail": detail}), status_code=status, media_type="application/json")


def create_app(settings: EvaluatorSettings, token: str | None = None) -> FastAPI:
    """The application; `token` (None: no auth) is the bearer token every route but /healthz requires."""
    store = WindowStore.from_settings(settings)
    metrics = _Metrics()
    metrics.cached_runs.set_function(lambda: store.cached_runs)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()  # also releases the state directory's lock

    app = FastAPI(
        lifespan=lifespan,
        title="chexrl evaluator",
        version="1",
        description="Rewards (the ChexReason paper's hard and nuanced) and multi-label metrics for chest X-ray completions.",
    )
    app.state.store = store
    _add_middleware(app, settings, token, metrics)
    _add_error_handlers(app, settings)
    _add_health_routes(app, store, token, metrics)
    _add_scoring_routes(app, settings, store, metrics)
    _add_window_routes(app, store, _models(settings)[2])
    return app


def _add_middleware(app: FastAPI, settings: EvaluatorSettings, token: str | None, metrics: _Metrics) -> None:
    # The last added runs outermost: Instrument (counts every answer, 401, 413 and 503 included), then
    # the request slots, then the token check (before any body byte), then the body size limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuth, token=token)
    app.add_middleware(RequestLimit, max_requests=settings.max_concurrency, exempt=OPEN_PATHS)
    app.add_middleware(Instrument, metrics=metrics)


def _add_error_handlers(app: FastAPI, settings: EvaluatorSettings) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        body = validation_error_body(list(exc.errors()), settings.max_validation_errors)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        response = _json_error(exc.status_code, exc.detail)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(StateUnavailable)
    async def _state_unavailable(request: Request, exc: StateUnavailable) -> Response:
        return _json_error(503, str(exc))

    @app.exception_handler(StateFull)
    async def _state_full(request: Request, exc: StateFull) -> Response:
        return _json_error(507, str(exc))


def _add_health_routes(app: FastAPI, store: WindowStore, token: str | None, metrics: _Metrics) -> None:
    expected = token.encode() if token else None

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:  # on the event loop: no worker thread to wait for
        """Liveness: 200 while the process serves. `state` says whether the run state can be written
        ("ok", "full", "unavailable") with a short reason code and the headroom; the path and the error
        text only for a caller with the token (or when the evaluator has none)."""
        state, reason = store.health()
        body = {
            "status": "ok",
            "state": state,
            "reason": reason,
            "headroom": {
                "disk_free_bytes": disk_free_bytes(store.dir),
                "reserve_bytes": store.reserve.size,
                "state_bytes": store.state_bytes,
                "max_state_bytes": store.max_state_bytes,
                "runs": store.runs,
                "max_runs": store.max_runs,
            },
        }
        if expected is None or bearer_matches(request.scope["headers"], expected):
            body["detail"] = store.broken or store.refused
            body["state_dir"] = str(store.dir)
        return body

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: _ERRORS[401]})
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _score_items(body, golds, cfg, window) -> dict:
    """Score a /score request's items in order (the nuanced ones against, and into, `window`)."""
    out = []
    for item, gold in zip(body.items, golds, strict=True):
        try:
            s = score_completion(item.completion, gold, body.reward, cfg, window, item.num_tokens)
        except ValueError as exc:  # e.g. length_unit "tokens" without num_tokens
            raise HTTPException(422, f"items[{len(out)}]: {exc}") from exc
        out.append(
            {
                "reward": s.reward.total,
                "valid": s.parsed.valid,
                "predicted": list(s.parsed.labels),
                "components": s.reward.components,
            }
        )
    return {"rewards": [o["reward"] for o in out], "items": out}


def _missing_run_id() -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "missing",
                "loc": ["body", "run_id"],
                "msg": "the nuanced reward needs run_id",
                "input": None,
            }
        ]
    )


def _add_scoring_routes(
    app: FastAPI, settings: EvaluatorSettings, store: WindowStore, metrics: _Metrics
) -> None:
    ScoreRequest, EvaluateRequest, _ = _models(settings)

    @app.post("/score", response_model=ScoreResponse, responses={**_ERRORS, **_STATE_ERRORS})
    async def score(body: ScoreRequest) -> Response:
        golds = _canonical_labels(body.items, TRAINING_SCHEMA)

        def run(window) -> dict:
            return _score_items(body, golds, settings.reward, window)

        if body.reward == "nuanced":
            if body.run_id is None:
                raise _missing_run_id()
            # In a worker thread: it waits on the run's lock and on SQLite's fsync.
            answer = await run_in_threadpool(store.apply, body.run_id, body.request_id, run)
        elif sum(len(item.completion) for item in body.items) > settings.offload_chars:
            answer = await run_in_threadpool(run, None)  # a large request: keep the event loop free
        else:
            answer = run(None)  # small ones are cheaper on the loop than a thread hop
        metrics.scored.labels(body.reward).inc(len(body.items))
        metrics.invalid.labels(body.reward).inc(sum(not i["valid"] for i in answer["items"]))
        # Serialised here, not re-validated against the response model (which documents the shape).
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post("/evaluate", response_model=DatasetMetrics, responses=_ERRORS)
    async def evaluate(body: EvaluateRequest) -> Response:
        golds = _canonical_labels(body.items, body.schema_)
        completions = [i.completion for i in body.items]
        schema = get_schema(body.schema_)
        if sum(map(len, completions)) > settings.offload_chars:
            m = await run_in_threadpool(completion_metrics, completions, golds, schema)
        else:
            m = completion_metrics(completions, golds, schema)
        return Response(orjson.dumps(m.as_dict()), media_type="application/json")


def _unknown_window_label(window: list[list[str]]) -> RequestValidationError | None:
    cx = SCHEMAS[TRAINING_SCHEMA]
    bad = [(i, lab) for i, labels in enumerate(window) for lab in labels if lab not in cx]
    if not bad:
        return None
    i, lab = bad[0]
    return RequestValidationError(
        [{"type": "value_error", "loc": ["body", "window", i], "msg": f"unknown label {lab!r}", "input": lab}]
    )


def _add_window_routes(app: FastAPI, store: WindowStore, WindowBody) -> None:
    route = "/runs/{run:any_text}/window"
    read_errors = {401: _ERRORS[401], **_STATE_ERRORS}

    @app.get(route, response_model=WindowOut, responses=read_errors)
    def get_window(run: RunIdPath) -> dict:
        return {"run_id": run, "window": store.get(run)}

    @app.put(route, response_model=WindowOut, responses={**_ERRORS, **_STATE_ERRORS})
    def put_window(run: RunIdPath, body: WindowBody) -> dict:
        if (error := _unknown_window_label(body.window)) is not None:
            raise error
        store.put(run, body.window)
        return {"run_id": run, "window": store.get(run)}

    @app.delete(route, response_model=WindowOut, responses=read_errors)
    def reset_window(run: RunIdPath) -> dict:
        """Forget the run's window and stored answers: a fresh run of this name starts clean. Works on a
        full disk too (the state directory's reserve file makes room)."""
        store.reset(run)
        return {"run_id": run, "window": []}
