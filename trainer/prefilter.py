"""Pass-rate prefiltering of the RL set (`grpo.prefilter`), before GRPO's step 0.

The starting policy samples `k` completions per RL image through the run's rollout workers (the run's
sampling settings with n = k), the evaluator's /score grades them with the hard reward (no run id: the
run's nuanced-reward window is not touched), and a completion passes when its Jaccard with the gold set
reaches the measure's threshold (1 for `exact`: the label set is the gold set). Images whose pass rate
lies outside [min_pass, max_pass] are set aside: the policy never or always answers them right, so their
GRPO groups would mostly score alike and teach nothing (arXiv 2603.01301: RL sharpens what is reachable).

Owns RUN_DIR/prefilter.jsonl, one row per RL image in RL-set order ({"index", "image", "k", "measure",
"passes", "pass_rate", "kept"}), written atomically once complete. While sampling, each finished batch of
images is appended to prefilter.partial.jsonl, so a run killed mid-prefilter and resumed samples only the
images it had not finished; a resumed run with a complete prefilter.jsonl reads it and samples nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from chexrl.config import EVAL_BATCH_IMAGES, PrefilterConfig, SamplingConfig
from chexrl.run_files import atomic_write_text, read_jsonl
from rollout_worker.types import RolloutPrompt
from trainer.run import Run

log = logging.getLogger(__name__)

PREFILTER = "prefilter.jsonl"
PARTIAL = "prefilter.partial.jsonl"
BATCH_IMAGES = EVAL_BATCH_IMAGES  # k completions each; the partial file grows a batch at a time


def prefilter_pool(run: Run, *, resume: bool) -> list[int]:
    """The RL-set indices GRPO draws from: the images the prefilter kept, measured now (through the run's
    router and evaluator client) or read back from RUN_DIR/prefilter.jsonl when resuming."""
    p = run.cfg.grpo.prefilter
    path = run.run_dir / PREFILTER
    if resume and path.is_file():
        rows = read_jsonl(path)
        check_rows(rows, [s.image_path for s in run.samples], p, path)
        log.info("prefilter: read %s (%d images), nothing resampled", path, len(rows))
    else:
        t0 = time.perf_counter()
        rows = measure(run, resume=resume)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        (run.run_dir / PARTIAL).unlink(missing_ok=True)
        log.info("prefilter: %d images in %.1fs", len(rows), time.perf_counter() - t0)
    kept = [r["index"] for r in rows if r["kept"]]
    if not kept:
        raise ValueError(
            f"grpo.prefilter kept none of {len(rows)} RL images (pass rates outside [{p.min_pass}, "
            f"{p.max_pass}] by {p.measure!r} over {p.k} samples; see {path}): widen the bounds"
        )
    log.info("prefilter: kept %d of %d RL images", len(kept), len(rows))
    return kept


def measure(run: Run, *, resume: bool) -> list[dict]:
    """Sample and grade every RL image not already in the partial file (kept only when resuming)."""
    p = run.cfg.grpo.prefilter
    run_dir = run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = run_dir / PARTIAL
    images = [s.image_path for s in run.samples]
    done = {r["index"]: r for r in read_jsonl(partial)} if resume else {}
    if done:
        check_rows(list(done.values()), images, p, partial, complete=False)
        log.info("prefilter: %d of %d images already measured in %s", len(done), len(images), partial)
    # rewrite the partial file with whole rows only (a kill can tear its last line), then append to it
    atomic_write_text(partial, "".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    todo = [i for i in range(len(images)) if i not in done]
    sampling = run.cfg.sampling.model_copy(update={"n": p.k, "greedy": False})
    with open(partial, "a") as f:
        for start in range(0, len(todo), BATCH_IMAGES):
            rows = _measure_batch(todo[start : start + BATCH_IMAGES], run, sampling, p)
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
            done.update((r["index"], r) for r in rows)
    return [done[i] for i in range(len(images))]


def _measure_batch(indices: list[int], run: Run, sampling: SamplingConfig, p: PrefilterConfig) -> list[dict]:
    prompts = [RolloutPrompt(f"prefilter:{i}", run.messages, [run.images[i]]) for i in indices]
    groups = run.router.generate(prompts, sampling)
    items = []
    for i, group in zip(indices, groups, strict=True):
        if group.error or len(group.completions) != p.k:
            raise RuntimeError(
                f"prefilter: sampling {run.samples[i].image_path} gave {len(group.completions)} of {p.k} "
                f"completions ({group.error or 'no error given'})"
            )
        labels = list(run.samples[i].labels)
        items += [
            {"completion": c.text, "labels": labels, "num_tokens": len(c.token_ids)}
            for c in group.completions
        ]
    scored = run.client.score("hard", items)  # no run_id: the run's nuanced-reward window stays as it is
    threshold = PrefilterConfig.threshold_of(p.measure)
    rows = []
    for j, i in enumerate(indices):
        passes = sum(s.components["jaccard"] >= threshold for s in scored[j * p.k : (j + 1) * p.k])
        rows.append(row(i, run.samples[i].image_path, passes, p))
    return rows


def row(index: int, image: str, passes: int, p: PrefilterConfig) -> dict:
    rate = passes / p.k
    return {
        "index": index,
        "image": image,
        "k": p.k,
        "measure": p.measure,
        "passes": passes,
        "pass_rate": rate,
        "kept": p.min_pass <= rate <= p.max_pass,
    }


def check_rows(rows: list[dict], images: list[str], p: PrefilterConfig, path: Path, *, complete: bool = True):
    """A stored prefilter must be this RL set's and this config's: one row per image (all of them when
    `complete`), the same image at each index, the same k and measure, and `kept` as these bounds say."""
    if complete and len(rows) != len(images):
        raise ValueError(f"{path}: {len(rows)} rows for {len(images)} RL images; start a new run_dir")
    for n, r in enumerate(rows, start=1):
        i = r.get("index")
        if not isinstance(i, int) or not 0 <= i < len(images) or r.get("image") != images[i]:
            raise ValueError(
                f"{path} row {n}: index {i!r}, image {r.get('image')!r} is not this run's RL set "
                f"({len(images)} images); start a new run_dir"
            )
        for key, want in (("k", p.k), ("measure", p.measure)):
            if r.get(key) != want:
                raise ValueError(
                    f"{path} row {n}: {key} {r.get(key)!r} but grpo.prefilter.{key} is {want!r}; "
                    "resume with the saved settings or start a new run_dir"
                )
        if complete and r.get("kept") != row(i, images[i], r["passes"], p)["kept"]:
            raise ValueError(
                f"{path} row {n}: kept {r.get('kept')} at pass rate {r.get('pass_rate')}, but "
                f"grpo.prefilter's bounds [{p.min_pass}, {p.max_pass}] say otherwise; resume with the saved "
                "bounds or start a new run_dir"
            )
