"""`chexrl bench score`: the evaluator in its own process, driven by concurrent clients over loopback.

Clients are separate processes (each a loop of blocking requests on one keep-alive connection), so the
measurement is not limited by one Python interpreter's GIL on the client side.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path

from chexrl.bench.common import device_description, percentile
from chexrl.core.parsing import format_completion
from chexrl.core.schemas import CHEXPERT14

PHRASES = (
    "The cardiac silhouette is enlarged with a cardiothoracic ratio above one half.",
    "There is blunting of the right costophrenic angle consistent with a small effusion.",
    "No focal consolidation is seen in either lung.",
    "An endotracheal tube terminates above the carina.",
    "Pulmonary vasculature is indistinct, suggesting interstitial edema.",
    "No pneumothorax is identified at the apices.",
    "Osseous structures are intact without acute fracture.",
)


def realistic_items(n: int, size: int, seed: int = 0) -> list[dict]:
    """Completions of about `size` bytes in the paper's format, with gold labels of 1 to 3 findings."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        gold = rng.sample(CHEXPERT14, rng.randint(1, 3))
        think = ""
        while len(think) < size - 80:
            think += rng.choice(PHRASES) + " "
        predicted = gold if rng.random() < 0.5 else rng.sample(CHEXPERT14, rng.randint(1, 3))
        items.append({"completion": format_completion(think.strip(), predicted), "labels": gold})
    return items


def _client(url: str, body: bytes, begin: float, stop_at: float, out) -> None:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, headers={"content-type": "application/json"}, timeout=30) as http:
        http.get("/healthz")  # open the connection before the clock runs
        while time.perf_counter() < begin:  # CLOCK_MONOTONIC: shared by all processes
            time.sleep(0.001)
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            response = http.post("/score", content=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)
    out.put(latencies)


def bench_score(clients: int, items: int, completion_bytes: int, seconds: float, reward: str) -> dict:
    import json

    import httpx

    from services.evaluator.process import EvaluatorProcess

    payload = {"reward": reward, "items": realistic_items(items, completion_bytes)}
    if reward == "nuanced":
        payload["run_id"] = "bench"
    body = json.dumps(payload).encode()
    with tempfile.TemporaryDirectory() as state:
        server = EvaluatorProcess(state, log=Path(state) / "server.log").start()
        url = server.url
        try:
            for _ in range(20):  # warm-up
                httpx.post(
                    f"{url}/score", content=body, headers={"content-type": "application/json"}
                ).raise_for_status()
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            begin = time.perf_counter() + 3.0  # every client is up and connected before the clock runs
            stop_at = begin + seconds
            procs = [
                ctx.Process(target=_client, args=(url, body, begin, stop_at, queue)) for _ in range(clients)
            ]
            for p in procs:
                p.start()
            latencies = [lat for _ in procs for lat in queue.get()]
            for p in procs:
                p.join()
        finally:
            server.stop()
    elapsed = seconds
    ms = [x * 1000 for x in latencies]
    return {
        "reward": reward,
        "clients": clients,
        "items_per_request": items,
        "completion_bytes": completion_bytes,
        "request_bytes": len(body),
        "requests": len(latencies),
        "completions_per_s": len(latencies) * items / elapsed,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "seconds": elapsed,
        **device_description(),
    }
