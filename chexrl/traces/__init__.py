"""Teacher traces for SFT: the template teacher, the OpenAI-compatible pipeline, and the JSONL store."""
