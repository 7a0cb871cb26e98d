"""The evaluator service (FastAPI): /score (hard and nuanced rewards), /evaluate (micro/macro F1, fail
rate), /runs/{run_id}/window, /healthz, /metrics. Start it with `chexrl serve-evaluator`."""
