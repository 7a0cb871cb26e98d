"""The trainer: LoRA SFT and GRPO on one policy, pushing adapters to the rollout workers."""
