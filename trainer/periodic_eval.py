"""Evaluation during GRPO: every `eval_steps`, the live policy on a held-out in-distribution set and an
out-of-distribution set, and the checkpoints the selection policies keep.

Each evaluation appends one line to `RUN_DIR/evals.jsonl` ({"step", "id", "ood", "id_name", "ood_name",
"warnings"}, the metrics in /evaluate's shape), keeps that step's adapter under `RUN_DIR/adapters/`, and
rewrites `RUN_DIR/selection.json`: which step each policy picks (best in-distribution macro-F1, the paper's
"Best F1-Score"; final, the paper's "Maximum"; best out-of-distribution; best worst-case). Adapters no
policy picks are deleted. Step 0 is the starting (SFT) checkpoint itself, with no adapter: a policy that
picks it says GRPO did not beat its start on that criterion, which is the paper's NIH finding.

The warning is the paper's trade-off, flagged while it happens: in-distribution macro-F1 up and
out-of-distribution macro-F1 down by more than `margin` against the start (chexrl.evaluation.selection).

With `samples` K (grpo.eval_samples), each evaluation also samples K completions per image at the run's
sampling settings and adds "pass_at_k": {"id": ..., "ood": ...} to the record (chexrl.core.pass_at_k:
Acc@1 of the greedy answers against Pass@K, with bootstrap intervals); `eval_scalars` turns a record into
the run log's eval/* scalars, eval/*pass_at_k* among them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from chexrl.config import ChexrlConfig, SamplingConfig
from chexrl.core.metrics import DatasetMetrics
from chexrl.core.pass_at_k import pass_at_k_summary
from chexrl.core.samples import XraySample
from chexrl.core.schemas import get_schema
from chexrl.evaluation.rollouts import evaluate_samples, sample_completions
from chexrl.evaluation.selection import select_checkpoints, tradeoff_warning
from chexrl.models.adapter_io import AdapterWeights, save_adapter_dir
from chexrl.run_files import atomic_write_text, read_jsonl
from trainer.run import GRPORun

log = logging.getLogger(__name__)
EVALS = "evals.jsonl"
SELECTION = "selection.json"
ADAPTERS = "adapters"


class PeriodicEvaluator:
    def __init__(
        self,
        run_dir: str | Path,
        id_set: tuple[str, list[XraySample]],
        ood_set: tuple[str, list[XraySample]],
        *,
        prompt_name: str,
        max_tokens: int,
        margin: float,
        resume_step: int | None = None,
        samples: int | None = None,
        sampling: SamplingConfig | None = None,
    ) -> None:
        """`samples` K (None: off) adds Pass@K from K completions per image sampled at `sampling`'s
        temperature, top-p and seed (default SamplingConfig(): the paper's GRPO settings)."""
        self.run_dir = Path(run_dir)
        (self.id_name, self.id_samples), (self.ood_name, self.ood_samples) = id_set, ood_set
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
        ood_out = evaluate_samples(router, self.ood_samples, **kwargs)
        id_m, ood_m = _without_completions(id_out), _without_completions(ood_out)
        record = {"step": step, "id": id_m, "ood": ood_m, "id_name": self.id_name, "ood_name": self.ood_name}
        if self.samples:
            record["pass_at_k"] = {
                "id": self._pass_at_k(router, self.id_samples, id_out),
                "ood": self._pass_at_k(router, self.ood_samples, ood_out),
            }
        warning = tradeoff_warning(self.evals[0], record, self.margin) if self.evals else None
        record["warnings"] = [warning] if warning else []
        if warning:
            log.warning("step %d: %s", step, warning)
        if adapter is not None:
            save_adapter_dir(adapter, self.run_dir / ADAPTERS / _name(step))
        self.evals.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._select()
        return record

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
    return out


def read_evals(run_dir: str | Path) -> list[dict]:
    """The run's in-training evaluations (a line torn by a kill is skipped)."""
    return read_jsonl(Path(run_dir) / EVALS)


def _name(step: int) -> str:
    return f"step-{step:06d}"


def _without_completions(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "completions"}


def periodic_evaluator(cfg: ChexrlConfig, run: GRPORun, resume_step: int | None) -> PeriodicEvaluator | None:
    """The run's evaluator during training, or None when the run has no evaluation sets."""
    if run.id_eval is None:
        return None
    g = cfg.grpo
    return PeriodicEvaluator(
        run.run_dir,
        run.id_eval,
        run.ood_eval,
        prompt_name=run.prompt_name,
        max_tokens=g.eval_max_tokens or cfg.sampling.max_tokens,
        margin=g.tradeoff_margin,
        resume_step=resume_step,
        samples=g.eval_samples,
        sampling=cfg.sampling,
    )


def log_eval(record: dict, progress: bool) -> dict[str, float]:
    """Scalars for the run log; the trade-off warning printed where the user is looking."""
    for warning in record["warnings"]:
        text = f"\033[1;31mWARNING step {record['step']}: {warning}\033[0m"
        if progress:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            log.warning(text)
    return eval_scalars(record)
