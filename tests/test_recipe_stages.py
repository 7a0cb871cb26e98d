"""The stage runner of `chexrl run`, on stand-in stages that write small files: up-to-date stages are
skipped, a changed section reruns its stage and everything after it, --from and --force rerun, an
interrupted resumable stage resumes, and an interrupted atomic stage leaves no partial output in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chexrl.config import ChexrlConfig, RecipeConfig
from chexrl.pipeline import manifest as mf
from chexrl.pipeline import runner


def stand_in_stages(calls: list, fail: set) -> tuple:
    def make(name: str, resumable: bool = False):
        def run(ctx, resume: bool) -> dict:
            calls.append((name, resume))
            path = ctx.out / name
            if resumable:  # appends, like the traces file and GRPO's logs
                with open(path, "a") as f:
                    f.write(f"{name} {resume}\n")
            else:
                mf.partial(path).write_text(name)
            if name in fail:
                raise RuntimeError(f"{name} killed")
            return {"wrote": name}

        return run

    def report(ctx, resume: bool) -> dict:
        calls.append(("report", resume))
        mf.partial(ctx.out / "summary.json").write_text(json.dumps({"done": True}))
        return {}

    def outputs(name):
        return lambda paths, cfg: [paths.out / name]

    return (
        runner.Stage("a", lambda c: c.sft.seed, (), outputs("a"), make("a")),
        runner.Stage(
            "b",
            lambda c: c.sft.learning_rate,
            ("a",),
            outputs("b"),
            make("b", resumable=True),
            resumable=True,
        ),
        runner.Stage("c", lambda c: c.grpo.beta, ("b",), outputs("c"), make("c")),
        runner.Stage("report", lambda c: None, ("c",), lambda p, c: [p.summary], report),
    )


@pytest.fixture
def stages(monkeypatch):
    calls, fail = [], set()
    monkeypatch.setattr(runner, "STAGES", stand_in_stages(calls, fail))
    return calls, fail


def config(**sft) -> ChexrlConfig:
    return ChexrlConfig(recipe=RecipeConfig(), sft=ChexrlConfig().sft.model_copy(update=sft))


def run(out: Path, cfg: ChexrlConfig, **kwargs) -> list[str]:
    lines: list[str] = []
    runner.run_recipe(cfg, out, log=lines.append, **kwargs)
    return lines


def test_up_to_date_changed_from_and_force(stages, tmp_path):
    calls, _ = stages
    lines = run(tmp_path, config())
    assert [c[0] for c in calls] == ["a", "b", "c", "report"] and "[1/4] a: running" in lines
    assert any(line.startswith("[1/4] a: done in") for line in lines)
    calls.clear()
    lines = run(tmp_path, config())
    assert calls == [] and "[2/4] b: up to date" in lines
    run(tmp_path, config(learning_rate=1e-4))  # b's section changed: b and all after it rerun
    assert [c[0] for c in calls] == ["b", "c", "report"]
    calls.clear()
    run(tmp_path, config(learning_rate=1e-4), from_stage="c")
    assert [c[0] for c in calls] == ["c", "report"]
    calls.clear()
    run(tmp_path, config(learning_rate=1e-4), force=True)
    assert [c[0] for c in calls] == ["a", "b", "c", "report"]
    manifest = json.loads((tmp_path / ".chexrl" / "c.json").read_text())
    assert manifest["inputs"] == {"b": mf.read_manifest(tmp_path, "b")["hash"]} and manifest["wrote"] == "c"
    with pytest.raises(ValueError, match="--from 'nope'"):
        run(tmp_path, config(), from_stage="nope")


def test_an_interrupted_stage_resumes_or_leaves_nothing_half_written(stages, tmp_path):
    calls, fail = stages
    fail.add("b")
    with pytest.raises(RuntimeError, match="b killed"):
        run(tmp_path, config())
    assert not (tmp_path / ".chexrl" / "b.json").exists() and (tmp_path / "a").read_text() == "a"
    fail.clear()
    calls.clear()
    lines = run(tmp_path, config())  # same configuration: b resumes in place, a is up to date
    assert calls[0] == ("b", True) and "[2/4] b: resuming" in lines and "[1/4] a: up to date" in lines
    assert (tmp_path / "b").read_text() == "b False\nb True\n"
    fail.add("c")
    with pytest.raises(RuntimeError):
        run(tmp_path, config(), force=True)
    # an atomic stage's output is its last complete one or nothing; the half-written one is not in place
    assert (tmp_path / "c").read_text() == "c" and (tmp_path / "c.partial").exists()
    assert not (tmp_path / ".chexrl" / "report.json").exists()  # what follows a rerun stage is out of date
    fail.clear()
    calls.clear()
    run(tmp_path, config())
    assert [c[0] for c in calls] == ["c", "report"] and not (tmp_path / "c.partial").exists()


def test_a_changed_configuration_restarts_an_interrupted_resumable_stage(stages, tmp_path):
    calls, fail = stages
    fail.add("b")
    with pytest.raises(RuntimeError):
        run(tmp_path, config())
    fail.clear()
    calls.clear()
    run(tmp_path, config(learning_rate=1e-3))
    assert calls[0] == ("b", False)
