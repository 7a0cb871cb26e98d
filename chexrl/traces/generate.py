"""Teacher traces from any OpenAI-compatible chat endpoint (vLLM, an inference gateway, a hosted API).

For each sample: send the image (base64 data URL in an `image_url` part) with the gold labels, told to
reason as if it had not seen them; validate the reply as the rewards read it (`validate_trace`: the shared
parser must accept it, its label set must equal the gold set, and nothing the nuanced reward penalises may
be in it: unknown or repeated labels, text outside the blocks); retry with exponential backoff and jitter;
append the accepted record to the output JSONL, or, once the attempts are spent on invalid traces, a
rejection with its reason to `<out>.rejected.jsonl`. Both files mark a sample final, so a re-run resumes
where the last one stopped.

Transport failures are never final: an HTTP error, a timeout or a broken answer leaves the sample pending
(counted in `Summary.failed`), so a rerun asks again. An endpoint that refuses every request (HTTP 401, 403,
404: a wrong key, URL or model name) stops the run with `TeacherEndpointError` instead of failing each
sample. On any error or Ctrl-C the queued requests are cancelled, never sent; the requests already in flight
finish without further retries, and their answers are still recorded.

`--guided` asks a vLLM server to constrain decoding with a regex that spells a valid trace ending in the
gold labels (vLLM's `structured_outputs={"regex": ...}` request field): useful for weak teachers, and how
the tests reach the accept path with a random-weight model.
"""

from __future__ import annotations

import base64
import mimetypes
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from chexrl.core.parsing import parse_completion
from chexrl.core.prompts import SYSTEM_RADIOLOGIST, get_format, teacher_instruction
from chexrl.core.schemas import get_schema
from chexrl.traces.store import (
    JsonlAppender,
    TraceJob,
    TraceRecord,
    done_ids,
    rejected_path,
    repair_jsonl,
)
from chexrl.traces.teacher import TEACHER_NAME, template_trace

REASON_HTTP = "http error"  # not final: the sample stays pending
REASON_CANCELLED = "cancelled"  # not final: the run stopped before the sample's attempts were spent
REASON_UNPARSEABLE = "unparseable"
REASON_MISMATCH = "labels mismatch"
REASON_DUPLICATE = "duplicate labels"
REASON_OUTSIDE = "text outside the blocks"
REASON_IMAGE = "image unreadable"
FINAL_REASONS = frozenset(
    {REASON_UNPARSEABLE, REASON_MISMATCH, REASON_DUPLICATE, REASON_OUTSIDE, REASON_IMAGE}
)
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# The endpoint refuses every request alike (wrong key, URL or model name): asking per sample only repeats it.
_FATAL_STATUS = {401, 403, 404}


class TeacherEndpointError(RuntimeError):
    """The endpoint refused a request in a way no retry fixes; the run stopped, nothing was recorded for it."""

    def __init__(self, message: str, summary: Summary | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class GenerateConfig:
    """Settings of one `traces generate` run."""

    endpoint: str  # OpenAI base URL, e.g. http://127.0.0.1:8000/v1 (".../chat/completions" is appended)
    model: str  # model name the endpoint serves; recorded as the record's "teacher"
    format: str = "free_reasoning"  # SFT target format of the traces (chexrl.core.prompts.SFT_FORMATS)
    api_key: str | None = None  # sent as a Bearer token when set
    concurrency: int = 4  # requests in flight
    max_retries: int = 3  # attempts after the first (HTTP errors and invalid traces both count)
    backoff_base_s: float = 1.0  # first back-off delay before jitter
    backoff_cap_s: float = 30.0  # longest back-off delay
    timeout_s: float = 120.0  # per request
    temperature: float = 0.7
    max_tokens: int = 1024
    guided: bool = False  # constrain decoding to a valid trace with the gold labels (vLLM only)
    guided_think_chars: int = 400  # longest think text the guided regex allows
    limit: int | None = None  # use only the first N input samples (the same N resumes the same set)
    seed: int = 0  # seeds the back-off jitter


@dataclass
class Summary:
    """What a run did; `rejected` counts samples by their final reason."""

    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)  # not final (HTTP errors): a rerun asks again
    cancelled: int = 0  # never sent, or stopped mid-retries, because the run stopped: a rerun asks again
    skipped: int = 0  # already final in the output files before this run
    retried: int = 0  # samples that needed more than one attempt
    requests: int = 0  # HTTP requests sent
    repaired_bytes: int = 0  # torn-line bytes truncated at start

    def as_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "failed": dict(self.failed),
            "failed_total": sum(self.failed.values()),
            "cancelled": self.cancelled,
            "skipped": self.skipped,
            "retried": self.retried,
            "requests": self.requests,
            "repaired_bytes": self.repaired_bytes,
        }


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0-based): 'equal jitter' exponential back-off.

    The nominal delay d = min(cap, base * 2**attempt); the result is uniform in [d/2, d].

    >>> rng = random.Random(0)
    >>> [round(backoff_delay(i, 1.0, 5.0, rng), 2) for i in range(5)]
    [0.92, 1.76, 2.84, 3.15, 3.78]
    """
    d = min(cap, base * (2**attempt))
    return d / 2 + rng.uniform(0, d / 2)


def image_data_url(path: str | Path) -> str:
    """The image file as a base64 data URL."""
    mime = mimetypes.guess_type(str(path))[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def guided_regex(labels: tuple[str, ...] | list[str], think_chars: int) -> str:
    """A regex for a valid trace whose solution is exactly `labels` (letters and spaces only)."""
    for label in labels:
        if not label.replace(" ", "").isalpha():
            raise ValueError(f"label {label!r} needs escaping; guided decoding supports letters and spaces")
    think = f"[A-Za-z0-9 ,.;:()\\n-]{{1,{think_chars}}}"
    return f"<think>{think}</think>\\n<solution>{', '.join(labels)}</solution>"


def teacher_messages(job: TraceJob, fmt: str, image_url: str) -> list[dict]:
    """OpenAI chat messages for one teacher request: image first, then the labelled instruction."""
    return [
        {"role": "system", "content": SYSTEM_RADIOLOGIST},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": teacher_instruction(job.labels, fmt, schema=job.schema)},
            ],
        },
    ]


def validate_trace(text: str, gold: tuple[str, ...], schema: str) -> tuple[str | None, str]:
    """(None, '') when the trace is acceptable, else (reason, detail).

    A trace is SFT's target, so it must be what the rewards score best: valid for `parse_completion`, the
    gold label set, and none of what the nuanced reward penalises (unknown labels, a label repeated, text
    outside the two blocks), read from the same parse.
    """
    parsed = parse_completion(text, get_schema(schema))
    if not parsed.valid:
        return REASON_UNPARSEABLE, parsed.error or ""
    if parsed.label_set != frozenset(gold) or parsed.unknown:
        return REASON_MISMATCH, f"got {sorted(parsed.labels)} unknown {list(parsed.unknown)}"
    if parsed.duplicates:
        return REASON_DUPLICATE, f"repeated {list(parsed.duplicates)}"
    if parsed.outside_text:
        return REASON_OUTSIDE, repr(parsed.outside_text[:200])
    return None, ""


@dataclass
class _Outcome:
    job: TraceJob
    trace: str | None  # accepted trace, or None
    reason: str | None
    detail: str
    attempts: int
    requests: int
    last_trace: str
    fatal: bool = False  # the endpoint refuses every request: stop the run


class TeacherClient:
    """A thin OpenAI chat-completions client (httpx) with the retry policy of a trace run."""

    def __init__(
        self,
        cfg: GenerateConfig,
        sleep: Callable[[float], object] | None = None,
        stop: threading.Event | None = None,
    ):
        self.cfg = cfg
        self.stop = stop or threading.Event()  # set when the run stops: no new attempt, no more back-off
        self.sleep = sleep or self.stop.wait  # a back-off ends early when the run stops
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = httpx.Client(base_url=cfg.endpoint.rstrip("/"), headers=headers, timeout=cfg.timeout_s)

    def close(self) -> None:
        self.http.close()

    def complete(self, messages: list[dict], labels: tuple[str, ...]) -> str:
        body = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.guided:
            body["structured_outputs"] = {"regex": guided_regex(labels, self.cfg.guided_think_chars)}
        resp = self.http.post("/chat/completions", json=body)
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"] or ""

    def _back_off(self, attempt: int, rng: random.Random) -> None:
        if attempt < self.cfg.max_retries:  # no wait after the last attempt
            self.sleep(backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_cap_s, rng))

    def trace_for(self, job: TraceJob, rng: random.Random) -> _Outcome:
        """Ask until a valid trace comes back or the attempts are spent."""
        try:
            url = image_data_url(job.image)
        except OSError as err:
            return _Outcome(job, None, REASON_IMAGE, str(err), 0, 0, "")
        messages = teacher_messages(job, self.cfg.format, url)
        reason, detail, last, requests = REASON_CANCELLED, "the run stopped before it was sent", "", 0
        attempts = 0
        for attempt in range(self.cfg.max_retries + 1):
            if self.stop.is_set():  # the run stopped: this sample is not final, a rerun asks again
                why = (
                    f"the run stopped after {attempts} attempts ({reason}: {detail})"[:300]
                    if attempts
                    else detail
                )
                return _Outcome(job, None, REASON_CANCELLED, why, attempts, requests, last)
            attempts = attempt + 1
            requests += 1
            try:
                text = self.complete(messages, job.labels)
            except httpx.HTTPStatusError as err:
                status = err.response.status_code
                reason, detail = REASON_HTTP, f"HTTP {status}: {err.response.text[:200]}"
                if status in _FATAL_STATUS:
                    self.stop.set()  # at once, so no other worker sends one more request to be refused
                    return _Outcome(job, None, reason, detail, attempts, requests, last, fatal=True)
                if status not in _RETRYABLE_STATUS:
                    break  # a malformed request will not get better by asking again in this run
                self._back_off(attempt, rng)
                continue
            except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as err:
                reason, detail = REASON_HTTP, f"{type(err).__name__}: {err}"[:300]
                self._back_off(attempt, rng)
                continue
            last = text
            reason, detail = validate_trace(text, job.labels, job.schema)
            if reason is None:
                return _Outcome(job, text, None, "", attempts, requests, text)
        return _Outcome(job, None, reason, detail, attempts, requests, last)


class _OutcomeRecorder:
    """Writes each outcome where it belongs (accepted traces, final rejections) and counts it; transport
    failures and cancellations stay pending for the next run."""

    def __init__(self, cfg: GenerateConfig, summary: Summary, accepted, rejected, log) -> None:
        self.cfg, self.summary, self.accepted, self.rejected, self.log = cfg, summary, accepted, rejected, log

    def __call__(self, o: _Outcome) -> None:
        summary = self.summary
        summary.requests += o.requests
        summary.retried += o.attempts > 1
        if o.trace is not None:
            job = o.job
            record = TraceRecord(
                job.sample_id,
                job.image,
                list(job.labels),
                o.trace,
                self.cfg.format,
                self.cfg.model,
                job.schema,
            )
            self.accepted.append(record.to_json())
            summary.accepted += 1
        elif o.reason in FINAL_REASONS:
            self.rejected.append(self._rejection(o))
            summary.rejected[o.reason] += 1
        elif o.reason == REASON_CANCELLED:
            summary.cancelled += 1
        else:  # transport: left pending for the next run
            summary.failed[o.reason] += 1
        if self.log:
            self.log(self._log_line(o))

    def _rejection(self, o: _Outcome) -> dict:
        return {
            "sample_id": o.job.sample_id,
            "image": o.job.image,
            "labels": list(o.job.labels),
            "format": self.cfg.format,
            "teacher": self.cfg.model,
            "reason": o.reason,
            "attempts": o.attempts,
            "detail": o.detail,
            "last_trace": o.last_trace[:2000],
        }

    @staticmethod
    def _log_line(o: _Outcome) -> str:
        if o.trace:
            state = "accepted"
        elif o.reason in FINAL_REASONS:
            state = o.reason
        else:
            state = f"{o.reason}, still pending"
        return f"{o.job.sample_id}: {state} ({o.attempts} attempts){'' if o.trace else ': ' + o.detail[:200]}"


def generate_traces(
    jobs: list[TraceJob],
    out: str | Path,
    cfg: GenerateConfig,
    *,
    sleep: Callable[[float], object] | None = None,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Write traces for `jobs` to `out` (and rejections next to it), resuming a previous run.

    `sleep` waits out a back-off (default: a wait that a stopping run cuts short). Raises
    `TeacherEndpointError` when the endpoint refuses every request; on that, any other error or Ctrl-C,
    queued requests are cancelled and the answers of those in flight are still written before it re-raises.
    """
    get_format(cfg.format)
    out = Path(out)
    rej = rejected_path(out)
    summary = Summary()
    summary.repaired_bytes = repair_jsonl(out) + repair_jsonl(rej)
    jobs = jobs[: cfg.limit] if cfg.limit is not None else jobs
    final = done_ids(out, rej)
    pending = [job for job in jobs if job.sample_id not in final]
    summary.skipped = len(jobs) - len(pending)
    if not pending:
        return summary
    stop = threading.Event()
    client = TeacherClient(cfg, sleep=sleep, stop=stop)
    with JsonlAppender(out) as accepted_file, JsonlAppender(rej) as rejected_file:
        record = _OutcomeRecorder(cfg, summary, accepted_file, rejected_file, log)
        pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency))
        futures = [
            pool.submit(client.trace_for, job, random.Random(f"{cfg.seed}:{job.sample_id}"))
            for job in pending
        ]
        try:
            _record_as_completed(futures, record, cfg, summary, stop)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            client.close()
    return summary


def _record_as_completed(futures: list, record: _OutcomeRecorder, cfg, summary: Summary, stop) -> None:
    """Record each answer as it arrives; a refused request raises `TeacherEndpointError`."""
    handled: set = set()
    try:
        for future in as_completed(futures):
            o = future.result()
            handled.add(future)
            record(o)
            if o.fatal:
                raise TeacherEndpointError(
                    f"{cfg.endpoint} refused a request ({o.detail}); check the endpoint, --model and the "
                    "API key. The run stopped and recorded nothing for the refused samples: rerun to ask again.",
                    summary,
                )
    except BaseException:
        # Stop: queued requests are never sent; those in flight make no further attempt, and their
        # answers (already paid for) are still recorded before the error goes on.
        stop.set()
        summary.cancelled += sum(f.cancel() for f in futures if f not in handled)
        for future in futures:
            if future in handled or future.cancelled():
                continue
            try:
                o = future.result()
            except Exception:  # the first error is the one re-raised
                continue
            record(o)
        raise


def template_traces(jobs: list[TraceJob], out: str | Path, fmt: str, *, seed: int = 0) -> Summary:
    """Write template-teacher traces for `jobs` (resumable like `generate_traces`; never rejects)."""
    get_format(fmt)
    out = Path(out)
    summary = Summary(repaired_bytes=repair_jsonl(out))
    final = done_ids(out)
    with JsonlAppender(out) as f:
        for job in jobs:
            if job.sample_id in final:
                summary.skipped += 1
                continue
            trace = template_trace(job.labels, fmt, seed=seed, key=job.sample_id)
            reason, detail = validate_trace(trace, job.labels, job.schema)
            if reason is not None:  # a bug in the template teacher, never expected
                raise AssertionError(f"template trace for {job.sample_id} invalid: {reason} {detail}")
            f.append(
                TraceRecord(
                    job.sample_id, job.image, list(job.labels), trace, fmt, TEACHER_NAME, job.schema
                ).to_json()
            )
            final.add(job.sample_id)
            summary.accepted += 1
    return summary
