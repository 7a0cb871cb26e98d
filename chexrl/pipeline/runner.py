"""The recipe's stages in order, each skipped when its manifest is up to date, resumed when it was
interrupted under the same configuration, and rerun (with everything after it) when its configuration or an
input changed. One progress line per stage with its elapsed time; the stages print their own progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chexrl.config import ChexrlConfig
from chexrl.pipeline import manifest as mf
from chexrl.pipeline import stages as st


def _dump(model) -> object:
    return None if model is None else model.model_dump(mode="json")


def _grpo_section(cfg: ChexrlConfig) -> dict:
    # the evaluator's address is where the reward is computed, not what it is: it does not change the stage
    grpo = cfg.grpo.model_dump(mode="json", exclude={"evaluator_url"})
    return {
        "grpo": grpo,
        "sampling": _dump(cfg.sampling),
        "reward": _dump(cfg.reward),
        "rollout": _dump(cfg.rollout),
    }


def _evaluate_section(cfg: ChexrlConfig) -> dict:
    r = cfg.recipe
    return {
        "pass_at_k": r.pass_at_k,
        "eval_max_model_len": r.eval_max_model_len,
        "names": [r.data.id_name, r.data.ood_name],
        "sampling": _dump(cfg.sampling),
        "rollout": _dump(cfg.rollout),
        "margin": cfg.grpo.tradeoff_margin,
        "prompt": cfg.grpo.prompt,  # every model is evaluated with the policy's prompt
    }


@dataclass(frozen=True)
class Stage:
    """One named step of the recipe: the configuration it depends on, the stages whose outputs it reads,
    its outputs (written atomically unless it resumes in place) and the function that makes them."""

    name: str
    section: Callable[[ChexrlConfig], object]
    inputs: tuple[str, ...]
    outputs: Callable[[st.RunPaths, ChexrlConfig], list[Path]]
    run: Callable[[st.RunContext, bool], dict]
    enabled: Callable[[ChexrlConfig], bool] = lambda cfg: True
    resumable: bool = False  # resumes in place (traces, GRPO) instead of writing to a temporary name


STAGES: tuple[Stage, ...] = (
    Stage(
        "tiny_model",
        lambda c: _dump(c.recipe.tiny_model),
        (),
        lambda p, c: [p.random_model(c.recipe.tiny_model.family)],
        st.tiny_model_stage,
        enabled=lambda c: c.recipe.tiny_model is not None,
    ),
    Stage(
        "synth_data",
        lambda c: _dump(c.recipe.synthetic_data),
        (),
        lambda p, c: [p.data],
        st.synth_data_stage,
        enabled=lambda c: c.recipe.synthetic_data is not None,
    ),
    Stage(
        "data",
        lambda c: {"data": _dump(c.recipe.data), "eval_limit": c.grpo.eval_limit},
        ("synth_data",),
        lambda p, c: [p.samples],
        st.data_stage,
    ),
    Stage(
        "pretrain",
        lambda c: _dump(c.pretrain),
        ("tiny_model", "data"),
        lambda p, c: [p.pretrained],
        st.pretrain_stage,
        enabled=lambda c: c.recipe.pretrain,
    ),
    Stage(
        "traces",
        lambda c: _dump(c.recipe.teacher),
        ("data",),
        lambda p, c: [p.traces],
        st.traces_stage,
        resumable=True,
    ),
    Stage(
        "sft",
        lambda c: {"sft": _dump(c.sft), "model": c.recipe.model},
        ("tiny_model", "pretrain", "traces"),
        lambda p, c: [p.sft],
        st.sft_stage,
    ),
    Stage(
        "evaluate_sft",
        _evaluate_section,
        ("tiny_model", "pretrain", "data", "sft"),
        lambda p, c: [p.sft_evaluation],
        st.evaluate_sft_stage,
    ),
    Stage("grpo", _grpo_section, ("data", "sft"), lambda p, c: [p.grpo], st.grpo_stage, resumable=True),
    Stage(
        "evaluate",
        _evaluate_section,
        ("data", "grpo", "evaluate_sft"),
        lambda p, c: [p.evaluation],
        st.evaluate_stage,
    ),
    Stage("report", lambda c: None, ("evaluate",), lambda p, c: [p.report, p.summary], st.report_stage),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_hashes(cfg: ChexrlConfig, stages: list[Stage]) -> dict[str, dict]:
    """Each enabled stage's hash and the hashes of its enabled inputs, from the configuration alone."""
    hashes: dict[str, dict] = {}
    for stage in stages:
        inputs = {name: hashes[name]["hash"] for name in stage.inputs if name in hashes}
        hashes[stage.name] = {"hash": mf.section_hash(stage.section(cfg), inputs), "inputs": inputs}
    return hashes


def stage_state(out: Path, stage: Stage, cfg: ChexrlConfig, digest: str) -> str:
    """'up to date' (manifest matches, outputs present), 'resume' (interrupted under this hash, resumable),
    or 'run'."""
    manifest = mf.read_manifest(out, stage.name)
    outputs = stage.outputs(st.RunPaths(out), cfg)
    if manifest and manifest.get("hash") == digest and all(p.exists() for p in outputs):
        return "up to date"
    if stage.resumable and mf.running_hash(out, stage.name) == digest:
        return "resume"
    return "run"


def run_stage(ctx: st.RunContext, stage: Stage, hashed: dict, resume: bool) -> float:
    """Run one stage and record its manifest; returns its seconds."""
    out, paths = ctx.out, st.RunPaths(ctx.out)
    mf.mark_running(out, stage.name, hashed["hash"])
    outputs = stage.outputs(paths, ctx.cfg)
    if not stage.resumable:
        for path in outputs:
            mf.remove(mf.partial(path))
            mf.partial(path).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    info = stage.run(ctx, resume)
    if not stage.resumable:
        for path in outputs:
            mf.commit(path)
    seconds = time.perf_counter() - start
    mf.write_manifest(out, stage.name, hashed["hash"], hashed["inputs"], {"seconds": seconds, **info})
    return seconds


def selected_stages(cfg: ChexrlConfig, from_stage: str | None, force: bool) -> tuple[list[Stage], set[str]]:
    """The enabled stages, and the names of those --from / --force rerun whatever their manifests say."""
    stages = [s for s in STAGES if s.enabled(cfg)]
    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"--from {from_stage!r}: this configuration's stages are {', '.join(names)}")
    forced = set(names) if force else set(names[names.index(from_stage) :]) if from_stage else set()
    return stages, forced


def run_recipe(
    cfg: ChexrlConfig,
    out: Path,
    *,
    from_stage: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the recipe's stages into `out`; returns the summary (summary.json)."""
    import json

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages, forced = selected_stages(cfg, from_stage, force)
    hashes = stage_hashes(cfg, stages)
    ctx = st.RunContext(cfg, out, log=log)
    total = time.perf_counter()
    try:
        for i, stage in enumerate(stages, 1):
            state = (
                "run" if stage.name in forced else stage_state(out, stage, cfg, hashes[stage.name]["hash"])
            )
            head = f"[{i}/{len(stages)}] {stage.name}"
            if state == "up to date":
                log(f"{head}: up to date")
                continue
            log(f"{head}: {'resuming' if state == 'resume' else 'running'}")
            for later in stages[i:]:  # what comes after reads this stage's new outputs: it reruns too
                mf.manifest_path(out, later.name).unlink(missing_ok=True)
            seconds = run_stage(ctx, stage, hashes[stage.name], resume=state == "resume")
            log(f"{head}: done in {seconds:.1f} s")
    finally:
        ctx.services.close()
    log(f"all stages done in {time.perf_counter() - total:.1f} s")
    return json.loads(st.RunPaths(out).summary.read_text())
