"""The pure domain core: label schemas, completion parsing, rewards, metrics, prompts and the GRPO loss.

Nothing here performs I/O or imports Ray, vLLM, FastAPI or GPU code; the evaluator service, the rollout
worker and the trainer all import these functions so that every number is computed in exactly one place.
"""
