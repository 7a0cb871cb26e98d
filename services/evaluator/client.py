"""The evaluator's HTTP client (the trainer's, for `/score` and the run windows), with retries. It imports
httpx only: no FastAPI, no app code.

A step's scoring is retried as a whole on connection errors, timeouts and 5xx answers (with exponential
backoff), so an evaluator restart mid-step delays the step instead of skipping it. Every request carries a
`request_id`; the evaluator applies a nuanced-reward window update once per id, so a retry whose first
attempt did reach the server does not count the predictions twice. Run ids are checked against the
evaluator's one pattern (chexrl/core/run_ids.py) before anything is sent, and percent-quoted in
the `/runs/{run_id}/...` paths.
"""

from __future__ import annotations

import logging
import time
import uuid
from urllib.parse import quote

import httpx

from chexrl.core.config import ScoringClientConfig
from chexrl.core.metrics import DatasetMetrics
from chexrl.core.run_ids import check_run_id
from chexrl.core.scoring import ScoredCompletion

log = logging.getLogger(__name__)
_DEFAULTS = ScoringClientConfig()  # grpo.scoring_client's defaults


class ScoringError(RuntimeError):
    """The evaluator refused the request (4xx) or stayed unreachable through every retry."""


class EvaluatorClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = _DEFAULTS.timeout_s,
        retries: int = _DEFAULTS.retries,
        backoff_s: float = _DEFAULTS.backoff_s,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)
        self._retries, self._backoff = retries, backoff_s

    def score(
        self,
        reward: str,
        items: list[dict],
        run_id: str | None = None,
        request_id: str | None = None,
    ) -> list[ScoredCompletion]:
        body = {"reward": reward, "items": items, "request_id": request_id or uuid.uuid4().hex}
        if run_id is not None:
            body["run_id"] = check_run_id(run_id)
        answer = self._post("/score", body)
        return [ScoredCompletion.model_validate(i) for i in answer["items"]]

    def evaluate(self, schema: str, items: list[dict]) -> DatasetMetrics:
        return DatasetMetrics.model_validate(self._post("/evaluate", {"schema": schema, "items": items}))

    def get_window(self, run_id: str) -> list[list[str]]:
        """The run's nuanced-reward window (its last predictions), for a checkpoint."""
        return self._request("GET", self._window_path(run_id))["window"]

    def put_window(self, run_id: str, window: list[list[str]]) -> None:
        """Restore the run's window from a checkpoint, so a resumed run scores as the original would."""
        self._request("PUT", self._window_path(run_id), {"window": window})

    def reset_run(self, run_id: str) -> None:
        """Forget the run's window and stored answers at the evaluator. A fresh (not resumed) run calls it
        before its first /score: runs are often named alike ("grpo"), and without it a new run would be
        scored against the previous one's predictions."""
        self._request("DELETE", self._window_path(run_id))

    @staticmethod
    def _window_path(run_id: str) -> str:
        return f"/runs/{quote(check_run_id(run_id), safe='')}/window"

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code < 500:
                    raise ScoringError(
                        f"evaluator refused {path}: {response.status_code} {response.text[:500]}"
                    )
                problem = f"HTTP {response.status_code} {response.text[:500]}"
            if attempt == self._retries:
                raise ScoringError(f"evaluator {path} failed {attempt + 1} times; last: {problem}")
            log.warning(
                "evaluator %s attempt %d failed (%s); retrying in %.1fs", path, attempt + 1, problem, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()
