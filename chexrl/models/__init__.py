"""Model checkpoints: random-weight builds of the real architectures (tiny for CPU tests, real-size for
GPU benchmarks) and the one place that loads any local Hugging Face directory.

- `presets.py`   the architectures' settings (tiny and published sizes), pure data
- `tokenizer.py` the locally trained tokenizers and the families' chat templates
- `tiny.py`      builds a checkpoint directory (`build_model_dir`)
- `loading.py`   family detection, processor and model loading, published key layouts
- `adapter_io.py` `AdapterWeights` (a LoRA adapter as pushed to the rollout workers) and its PEFT files
- `merged_sync.py` an adapter folded into a vLLM engine's base weights (the `merged` weight sync)
- `vllm_check.py` a script that loads a directory in vLLM with an image and a LoRA adapter
- `vllm_env.py`  the environment every vLLM engine starts with (KV cache, engine core, threads)
"""

from chexrl.models.presets import FAMILIES, PRESETS

__all__ = ["FAMILIES", "PRESETS"]
