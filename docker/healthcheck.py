"""Health check of the images (Dockerfile HEALTHCHECK, compose healthcheck, the k8s submitter's wait).

    python docker/healthcheck.py                    # GET $CHEXRL_HEALTHCHECK_URL once; no URL: healthy
    python docker/healthcheck.py --wait 600 URL...  # until every URL answers 200, at most 600 s

Each role sets its own URL: the Ray head its dashboard's /api/gcs_healthz (exempt from token
authentication), the evaluator its /healthz. Standard library only.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["--wait"]:
        deadline = time.monotonic() + float(argv[1])
        pending = list(argv[2:])
        while pending:
            pending = [url for url in pending if not healthy(url)]
            if pending and time.monotonic() > deadline:
                print(f"healthcheck: not healthy in time: {' '.join(pending)}", file=sys.stderr)
                return 1
            if pending:
                time.sleep(2)
        return 0
    url = argv[0] if argv else os.environ.get("CHEXRL_HEALTHCHECK_URL")
    if not url:
        return 0  # a role without a server (the one-shot job submitter)
    return 0 if healthy(url) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
