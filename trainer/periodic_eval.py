"""Evaluation during GRPO: every `eval_steps`, the live policy on a held-out in-distribution set and one or
more out-of-distribution sets (sites, each scored on its own schema's labels), and the checkpoints the
selection policies keep.

Each evaluation appends one line to `RUN_DIR/evals.jsonl` ({"step", "id", "ood", "id_name", "ood_name",
"warnings"}, the metrics in /evaluate's shape), keeps that step's adapter under `RUN_DIR/adapters/`, and
rewrites `RUN_DIR/selection.json`: which step each policy picks (best in-distribution macro-F1, the paper's
"Best F1-Score"; final, the paper's "Maximum"; best out-of-distribution; best worst-case). Adapters no
policy picks are deleted. Step 0 is the starting (SFT) checkpoint itself, with no adapter: a policy that
picks it says GRPO did not beat its start on that criterion, which is the paper's NIH finding.

Each record keeps every image's answer ("per_image"), so each evaluation is compared with the start on the
same images: "vs_start" holds the paired bootstrap intervals of its ID and OOD macro-F1 minus the start's.
The trade-off is flagged while it happens: in-distribution macro-F1 up and out-of-distribution macro-F1
down by more than `margin` against the start is a warning when the OOD drop's interval excludes 0, else a
note ("notes") that the drop is within resampling noise (chexrl.evaluation.selection.tradeoff_finding).
With `stop_rule` (grpo.stop_when_ood_drops), an evaluation that completes the run of OOD drops carries
"stop" (why), and `keep_best_ood` writes the best-OOD checkpoint as the final adapter.

With several OOD sites, "ood"/"ood_name", per_image's "ood", "vs_start" and Pass@K's "ood" stay the first
site's, so one-site readers (selection ties, the stop rule) work unchanged; "ood_sites" {name: metrics}
holds every site, "per_image_sites" and "vs_start_sites" their answers and intervals, "pass_at_k_sites"
their Pass@K. The trade-off is judged per site, "tradeoff_sites" names the sites it held on and a first
warning says so (chexrl.evaluation.sites). Selection scores OOD as the sites' mean macro-F1.

With `samples` K (grpo.eval_samples), each evaluation also samples K completions per image at the run's
sampling settings and adds "pass_at_k": {"id": ..., "ood": ...} to the record (chexrl.core.pass_at_k:
Acc@1 of the greedy answers against Pass@K, with bootstrap intervals); `eval_scalars` turns a record into
the run log's eval/* scalars, eval/*pass_at_k* among them.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from chexrl.config import SamplingConfig, StopWhenOODDrops
from chexrl.core.metrics import DatasetMetrics
from chexrl.core.paired import per_image_answers
from chexrl.core.pass_at_k import pass_at_k_summary
from chexrl.core.samples import XraySample
from chexrl.core.schemas import get_schema
from chexrl.evaluation.rollouts import evaluate_samples, sample_completions
from chexrl.evaluation.selection import intervals_vs_start, select_checkpoints, stop_reason, tradeoff_finding
from chexrl.evaluation.sites import site_findings, site_scalars
from chexrl.models.adapter_io import AdapterWeights, load_adapter_dir, save_adapter_dir
from chexrl.run_files import atomic_write_text, read_jsonl
from trainer.run import Run

log = logging.getLogger(__name__)
EVALS = "evals.jsonl"
SELECTION = "selection.json"
ADAPTERS = "adapters"


class PeriodicEvaluator:
    def __init__(
        self,
        run_dir: str | Path,
        id_set: tuple[str, list[XraySample]],
        ood_set: tuple[str, list[XraySample]] | Sequence[tuple[str, list[XraySample]]],
        *,
        prompt_name: str,
        max_tokens: int,
        margin: float,
        resume_step: int | None = None,
        samples: int | None = None,
        sampling: SamplingConfig | None = None,
        stop_rule: StopWhenOODDrops | None = None,
    ) -> None:
        """`samples` K (None: off) adds Pass@K from K completions per image sampled at `sampling`'s
        temperature, top-p and seed (default SamplingConfig(): the paper's GRPO settings). `stop_rule`
        (grpo.stop_when_ood_drops) marks the evaluation after which the run should stop ("stop")."""
        self.stop_rule = stop_rule
        self.run_dir = Path(run_dir)
        self.id_name, self.id_samples = id_set
        self.ood_sites = [ood_set] if isinstance(ood_set[0], str) else list(ood_set)
        if not self.ood_sites or len({name for name, _ in self.ood_sites}) != len(self.ood_sites):
            raise ValueError(f"OOD sets need distinct names, got {[name for name, _ in self.ood_sites]}")
        self.ood_name, self.ood_samples = self.ood_sites[0]
        self.prompt_name, self.max_tokens, self.margin = prompt_name, max_tokens, margin
        if samples is not None and samples < 1:
            raise ValueError(f"grpo.eval_samples must be at least 1, got {samples}")
        self.samples, self.sampling = samples, sampling or SamplingConfig()
        self.path = self.run_dir / EVALS
        self.evals = [e for e in read_evals(self.run_dir) if resume_step is None or e["step"] <= resume_step]
        if resume_step is None and self.evals:
            raise FileExistsError(f"{self.path} exists: resume the run or use a new run_dir")
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in self.evals))

    def done(self, step: int) -> bool:
        return any(e["step"] == step for e in self.evals)

    def evaluate(self, router, step: int, adapter: AdapterWeights | None) -> dict:
        """Evaluate the router's live policy (which must be `adapter`), log, keep and select."""
        kwargs = {"prompt_name": self.prompt_name, "max_tokens": self.max_tokens}
        id_out = evaluate_samples(router, self.id_samples, **kwargs)
        ood_outs = [evaluate_samples(router, samples, **kwargs) for _, samples in self.ood_sites]
        id_m, ood_m = _without_completions(id_out), _without_completions(ood_outs[0])
        record = {"step": step, "id": id_m, "ood": ood_m, "id_name": self.id_name, "ood_name": self.ood_name}
        answers = [_answers(o, samples) for (_, samples), o in zip(self.ood_sites, ood_outs, strict=True)]
        # each image's answer: the paired intervals against the start
        record["per_image"] = {"id": _answers(id_out, self.id_samples), "ood": answers[0]}
        if len(self.ood_sites) > 1:
            names = [name for name, _ in self.ood_sites]
            record["ood_sites"] = {n: _without_completions(o) for n, o in zip(names, ood_outs, strict=True)}
            record["per_image_sites"] = dict(zip(names, answers, strict=True))
        if self.samples:
            self._add_pass_at_k(record, router, id_out, ood_outs)
        self._judge(record)
        if adapter is not None:
            save_adapter_dir(adapter, self.run_dir / ADAPTERS / _name(step))
        self.evals.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._select()
        return record

    def _judge(self, record: dict) -> None:
        """Against the start: the paired intervals ("vs_start"), the trade-off as a warning (beyond noise)
        or a note, and with grpo.stop_when_ood_drops, the reason to stop ("stop")."""
        found = None
        if self.evals:
            sizes = {name: len(samples) for name, samples in self.ood_sites}
            found = site_findings(self.evals[0], record, lambda prev, cur: self._finding(prev, cur, sizes))
            record["vs_start"] = found.intervals.get(self.ood_name)
            if len(self.ood_sites) > 1:
                record["vs_start_sites"], record["tradeoff_sites"] = found.intervals, found.held
        record["warnings"] = found.warnings if found else []
        record["notes"] = found.notes if found else []
        for text in record["warnings"]:
            log.warning("step %d: %s", record["step"], text)
        if self.stop_rule is not None:
            reason = stop_reason([*self.evals, record], self.stop_rule.margin, self.stop_rule.evaluations)
            if reason:
                record["stop"] = reason
                log.warning("step %d: %s", record["step"], reason)

    def _finding(self, start: dict, cur: dict, sizes: dict[str, int]):
        """(intervals against the start, the trade-off finding or None) of one site's view of a record."""
        intervals = intervals_vs_start(start, cur)
        sized = cur | {"n_id": len(self.id_samples), "n_ood": sizes[cur["ood_name"]]}
        return intervals, tradeoff_finding(start, sized, self.margin, intervals=intervals)

    def _add_pass_at_k(self, record: dict, router, id_out: dict, ood_outs: list[dict]) -> None:
        """Pass@K in and out of distribution ("ood": the first site; "pass_at_k_sites": every site)."""
        passes = [
            self._pass_at_k(router, samples, out)
            for (_, samples), out in zip(self.ood_sites, ood_outs, strict=True)
        ]
        record["pass_at_k"] = {"id": self._pass_at_k(router, self.id_samples, id_out), "ood": passes[0]}
        if len(self.ood_sites) > 1:
            record["pass_at_k_sites"] = {name: p for (name, _), p in zip(self.ood_sites, passes, strict=True)}

    @property
    def stopped(self) -> bool:
        """The latest evaluation says to stop (grpo.stop_when_ood_drops)."""
        return bool(self.evals and self.evals[-1].get("stop"))

    def keep_best_ood(self, final_dir: str | Path, template: AdapterWeights) -> int:
        """Write the best-OOD checkpoint as the final adapter (atomically); returns its step. The start
        (step 0) has no adapter: it is written as `template` with its LoRA B matrices zeroed, which serves
        exactly the starting checkpoint."""
        pick = select_checkpoints(self.evals)["best_ood"]
        if pick["step"] == 0:
            zero = {k: (v.clone().zero_() if "lora_B" in k else v) for k, v in template.tensors.items()}
            save_adapter_dir(replace(template, tensors=zero), final_dir)
        else:
            source = self.run_dir / ADAPTERS / _name(pick["step"])
            save_adapter_dir(load_adapter_dir(source, version=template.version), final_dir)
        return pick["step"]

    def _pass_at_k(self, router, samples: list[XraySample], greedy: dict) -> dict:
        """Acc@1 of the greedy completions already made against Pass@K of K new samples per image."""
        sampled = sample_completions(
            router,
            samples,
            self.sampling,
            n=self.samples,
            prompt_name=self.prompt_name,
            max_tokens=self.max_tokens,
        )
        golds = [s.labels for s in samples]
        return pass_at_k_summary(
            greedy["completions"], sampled, golds, get_schema(greedy["schema"]), self.samples
        )

    def _select(self) -> None:
        selection = select_checkpoints(self.evals)
        for pick in selection.values():
            pick["checkpoint"] = f"{ADAPTERS}/{_name(pick['step'])}" if pick["step"] > 0 else None
        atomic_write_text(self.run_dir / SELECTION, json.dumps(selection, indent=2) + "\n")
        kept = {pick["checkpoint"] for pick in selection.values()}
        for path in sorted((self.run_dir / ADAPTERS).glob("step-*")):
            if f"{ADAPTERS}/{path.name}" not in kept:
                shutil.rmtree(path, ignore_errors=True)


def eval_scalars(record: dict) -> dict[str, float]:
    """The run log's scalars of one evaluation record: macro/micro-F1 and fail rate in and out of
    distribution and, when the record has Pass@K, eval/{id,ood}_pass_at_k (exact match),
    eval/{id,ood}_pass_at_k_jaccard (best-of-K), eval/{id,ood}_pass_at_k_acc_at_1 and _acc_at_1_jaccard
    (greedy), eval/{id,ood}_pass_at_k_gap (Pass@K - Acc@1)."""
    out = {}
    for side in ("id", "ood"):
        m = DatasetMetrics.model_validate(record[side])
        out[f"eval/{side}_macro_f1"] = m.macro.f1
        out[f"eval/{side}_micro_f1"] = m.micro.f1
        out[f"eval/{side}_fail_rate"] = m.fail_rate
    for side, p in (record.get("pass_at_k") or {}).items():
        out[f"eval/{side}_pass_at_k"] = p["pass_at_k"]["mean"]
        out[f"eval/{side}_pass_at_k_jaccard"] = p["pass_at_k_jaccard"]["mean"]
        out[f"eval/{side}_pass_at_k_acc_at_1"] = p["acc_at_1"]["mean"]
        out[f"eval/{side}_pass_at_k_acc_at_1_jaccard"] = p["acc_at_1_jaccard"]["mean"]
        out[f"eval/{side}_pass_at_k_gap"] = p["gap"]["mean"]
    return out | site_scalars(record)


def read_evals(run_dir: str | Path) -> list[dict]:
    """The run's in-training evaluations (a line torn by a kill is skipped)."""
    return read_jsonl(Path(run_dir) / EVALS)


def _name(step: int) -> str:
    return f"step-{step:06d}"


def _answers(out: dict, samples: list[XraySample]) -> dict:
    """Each image's answer of an evaluate_samples output (chexrl.core.paired.per_image_answers)."""
    return per_image_answers(out["completions"], [s.labels for s in samples], get_schema(out["schema"]))


def _without_completions(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "completions"}


def periodic_evaluator(run: Run, resume_step: int | None) -> PeriodicEvaluator | None:
    """The run's evaluator during training, or None when the run has no held-out sets."""
    cfg, held_out = run.cfg, run.data.held_out
    g = cfg.grpo
    if held_out is None:
        if g.stop_when_ood_drops is not None:
            raise ValueError(
                "grpo.stop_when_ood_drops needs evaluation during training (an ID and an OOD set)"
            )
        return None
    return PeriodicEvaluator(
        run.run_dir,
        held_out.id_set,
        held_out.ood_sets,
        prompt_name=g.prompt,
        max_tokens=g.eval_max_tokens or cfg.sampling.max_tokens,
        margin=g.tradeoff_margin,
        resume_step=resume_step,
        samples=g.eval_samples,
        sampling=cfg.sampling,
        stop_rule=g.stop_when_ood_drops,
    )


def log_eval(record: dict, progress: bool) -> dict[str, float]:
    """Scalars for the run log; the trade-off warning printed where the user is looking."""
    for warning in record["warnings"] + ([record["stop"]] if record.get("stop") else []):
        text = f"\033[1;31mWARNING step {record['step']}: {warning}\033[0m"
        if progress:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            log.warning(text)
    return eval_scalars(record)
