"""The evaluator service: reward scoring (`/score`) and data-set metrics (`/evaluate`) over HTTP.

Every number comes from chexrl.core (score_completion, completion_metrics): the trainer and this service
cannot disagree. Client input never causes a 5xx: bodies are size-limited before they are read (413),
validated by pydantic models whose errors name the field (422), and gold labels are checked against the
schema with the item index in the error.
"""

import hmac
import os
import time
from typing import Annotated, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chexrl.core.metrics import completion_metrics
from chexrl.core.schemas import SCHEMAS, get_schema
from chexrl.core.scoring import score_completion
from services.evaluator.body_limit import BodySizeLimit
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.window_store import WindowStore

TOKEN_ENV = "CHEXRL_EVALUATOR_TOKEN"
RUN_ID_PATTERN = r"^[A-Za-z0-9._:@/-]+$"
# Separate objects for the body and the path: FastAPI marks a path parameter's FieldInfo required in
# place, which would make the (optional) body field required in the OpenAPI document too.
RunIdBody = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=RUN_ID_PATTERN)]
RunIdPath = Annotated[str, Path(min_length=1, max_length=200, pattern=RUN_ID_PATTERN)]


def _models(settings: EvaluatorSettings):
    """Request models whose limits come from the settings."""
    CompletionText = Annotated[str, Field(max_length=settings.max_completion_chars)]
    LabelText = Annotated[str, Field(max_length=100)]
    LabelList = Annotated[list[LabelText], Field(max_length=settings.max_labels_per_item)]

    class Strict(BaseModel):
        # strict: "3" is not an int and 1 is not a string; JSON types must be exactly the schema's
        model_config = ConfigDict(extra="forbid", strict=True)

    class ScoreItem(Strict):
        completion: CompletionText
        labels: LabelList
        num_tokens: Annotated[int, Field(ge=0, le=10_000_000)] | None = None

    class ScoreRequest(Strict):
        reward: Literal["hard", "nuanced"]
        run_id: RunIdBody | None = None
        request_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
        items: Annotated[list[ScoreItem], Field(min_length=1, max_length=settings.max_items_per_request)]

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


class ScoredItemOut(BaseModel):
    reward: float
    valid: bool
    predicted: list[str]
    components: dict[str, float]


class ScoreResponse(BaseModel):
    rewards: list[float]
    items: list[ScoredItemOut]


class PRFOut(BaseModel):
    precision: float
    recall: float
    f1: float


class LabelScoreOut(PRFOut):
    support: int
    predicted: int


class EvaluateResponse(BaseModel):
    n: int
    fail_rate: float
    micro: PRFOut
    macro: PRFOut
    per_label: dict[str, LabelScoreOut]


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


def create_app(settings: EvaluatorSettings) -> FastAPI:
    ScoreRequest, EvaluateRequest, WindowBody = _models(settings)
    store = WindowStore(settings.state_dir, settings.reward.nuanced.window_size)
    metrics = _Metrics()
    token = os.environ.get(TOKEN_ENV) or None
    app = FastAPI(
        title="chexrl evaluator",
        version="1",
        description="Rewards (the ChexReason paper's hard and nuanced) and multi-label metrics for chest X-ray completions.",
    )
    app.state.store = store

    def require_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]
    errors = {
        400: {"description": "The body is not JSON, or Content-Length is invalid"},
        401: {"description": "Missing or wrong bearer token (only when CHEXRL_EVALUATOR_TOKEN is set)"},
        413: {"description": f"Body over {settings.max_body_bytes} bytes"},
    }

    app.add_middleware(Instrument, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=auth, response_class=PlainTextResponse, responses={401: errors[401]})
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/score", dependencies=auth, response_model=ScoreResponse, responses=errors)
    async def score(body: ScoreRequest) -> Response:
        golds = _canonical_labels(body.items, "chexpert14")
        cfg = settings.reward

        def run(window) -> dict:
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

        if body.reward == "nuanced":
            if body.run_id is None:
                raise RequestValidationError(
                    [
                        {
                            "type": "missing",
                            "loc": ["body", "run_id"],
                            "msg": "the nuanced reward needs run_id",
                            "input": None,
                        }
                    ]
                )
            answer = store.apply(body.run_id, body.request_id, run)
        else:
            answer = run(None)
        metrics.scored.labels(body.reward).inc(len(body.items))
        metrics.invalid.labels(body.reward).inc(sum(not i["valid"] for i in answer["items"]))
        # Serialised here, not re-validated against the response model (which documents the shape).
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post("/evaluate", dependencies=auth, response_model=EvaluateResponse, responses=errors)
    async def evaluate(body: EvaluateRequest) -> Response:
        golds = _canonical_labels(body.items, body.schema_)
        m = completion_metrics([i.completion for i in body.items], golds, get_schema(body.schema_))
        return Response(orjson.dumps(m.as_dict()), media_type="application/json")

    @app.get("/runs/{run}/window", dependencies=auth, response_model=WindowOut, responses={401: errors[401]})
    def get_window(run: RunIdPath) -> dict:
        return {"run_id": run, "window": store.get(run)}

    @app.put("/runs/{run}/window", dependencies=auth, response_model=WindowOut, responses=errors)
    def put_window(run: RunIdPath, body: WindowBody) -> dict:
        cx = SCHEMAS["chexpert14"]
        bad = [(i, lab) for i, labels in enumerate(body.window) for lab in labels if lab not in cx]
        if bad:
            i, lab = bad[0]
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ["body", "window", i],
                        "msg": f"unknown label {lab!r}",
                        "input": lab,
                    }
                ]
            )
        store.put(run, body.window)
        return {"run_id": run, "window": store.get(run)}

    @app.on_event("shutdown")
    def _close() -> None:
        store.close()

    return app
