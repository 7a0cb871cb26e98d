"""The rollout worker: a Ray actor hosting a vLLM engine that turns X-ray prompts into groups of sampled
completions, with versioned LoRA adapters pushed in memory by the trainer.

Read in this order: types.py (what goes in and out), engine.py (the vLLM adapter, no Ray),
adapter_sync.py (the vLLM-specific LoRA hot-swap), actor.py (the Ray actor and the adapter registry),
router.py (several workers behind one call).
"""
