"""Passkey retrieval: `engine` (prompts, the paper's scoring rule, the cells) and `task` (options,
checks, summary: the registry's `TASK`)."""
