"""The evaluator service (FastAPI): /score (hard and nuanced rewards), /evaluate (micro/macro F1, fail
rate), /runs/{run_id}/window (GET, PUT, DELETE), /healthz, /metrics. Start it with `chexrl
serve-evaluator`; security.py says who may call it, window_store.py owns the run state, client.py is the
trainer's HTTP client (importable without the app)."""
