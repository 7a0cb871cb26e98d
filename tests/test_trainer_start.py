"""`start_run` (trainer/start.py) once the actors are up: whatever fails before the first step ends the
rollout workers, the learner ranks and the evaluator client and frees their placement bundles, so that a
failed start leaves nothing holding the cluster's CPUs or GPUs. Pure unit tests with fake actors; the real
actors start in test_trainer_grpo_run.py."""

from __future__ import annotations

import pytest

from chexrl.config import ChexrlConfig
from chexrl.core.samples import XraySample
from trainer import start as start_mod
from trainer.run import RunData


class Closable:
    """Records which of the actors were ended."""

    def __init__(self, name: str, ended: list[str], fail: str | None = None) -> None:
        self.name, self.ended, self.fail = name, ended, fail

    def shutdown(self) -> None:
        self.ended.append(self.name)

    close = remove = shutdown

    def reset_run(self, run_id: str) -> None:
        if self.fail == "reset_run":
            raise ConnectionError("evaluator unreachable")

    def info(self) -> list[dict]:
        if self.fail == "info":
            raise RuntimeError("worker died")
        return []

    def nodes(self) -> list[dict]:
        return []


@pytest.mark.parametrize(("failing", "error"), [("reset_run", ConnectionError), ("info", RuntimeError)])
def test_a_start_that_fails_after_the_actors_are_up_ends_them_all(tmp_path, monkeypatch, failing, error):
    ended: list[str] = []
    router = Closable("router", ended, fail=failing if failing == "info" else None)
    client = Closable("client", ended, fail=failing if failing == "reset_run" else None)
    actors = (router, Closable("learner", ended), Closable("placement", ended))
    monkeypatch.setattr(start_mod, "start_actors", lambda cfg: actors)
    monkeypatch.setattr(start_mod, "EvaluatorClient", lambda *a, **k: client)
    monkeypatch.setattr(start_mod, "image_bytes", lambda path: b"img")
    cfg = ChexrlConfig.model_validate({"grpo": {"model": "m", "run_dir": str(tmp_path), "run_id": "r"}})
    sample = XraySample("/img.png", ("Edema",), "p", "s", "mimic", "train", "chexpert14")
    with pytest.raises(error):
        start_mod.start_run(cfg, RunData([sample]), resume=False)
    assert sorted(ended) == ["client", "learner", "placement", "router"]
