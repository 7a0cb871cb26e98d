"""The rollout worker: a Ray actor hosting a vLLM engine that turns X-ray prompts into groups of sampled
completions, with versioned LoRA adapters pushed in memory by the trainer.

Read in this order: types.py (what goes in and out), engine.py (the vLLM adapter, no Ray),
adapter_sync.py (the adapter served as a live LoRA) or chexrl/models/merged_sync.py (the adapter folded
into the base weights; the CPU default), actor.py (the Ray actor and the adapter registry),
router.py (several workers behind one call). The adapter itself, `AdapterWeights`, and its files are
chexrl/models/adapter_io.py.
"""
