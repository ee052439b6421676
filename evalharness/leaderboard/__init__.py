"""The lm-eval bridge: Open LLM leaderboard tasks (YaRN paper, Table 3) on the scaled model.

The model that `scaling.apply_scaling` scaled is handed to lm-eval's `HFLM` as the object itself
(never reloaded), with an explicit `max_length`: lm-eval otherwise reads
`config.max_position_embeddings`, which knows nothing of the scaling.

Paper protocol (`PAPER_TASKS`, read from the task file `tasks/yarn-paper/leaderboard.yaml`):
arc_challenge 25-shot acc_norm, hellaswag 10-shot acc_norm, mmlu 5-shot accuracy as the UNWEIGHTED
mean of its subject accuracies (`acc_macro`; lm-eval's own group number is weighted by subject size
and is kept as `acc_weighted`), truthfulqa_mc2 0-shot `acc` (the MC2 score). Each task is its own
`lm_eval.simple_evaluate` call (the `openllm` group is not reliable across lm-eval versions). Any
other lm-eval task or group name, or the path of a task YAML, passes through with its own defaults
and all of its metrics recorded.

Offline use: the package ships lm-eval task YAMLs in `tasks/lm-eval/` (in the wheel
`evalharness/tasks/lm-eval/`) that read local files in the original datasets' column layouts
(`MIRRORS`). With `data_dir` (CLI `--leaderboard-data DIR`) each paper task whose folder
DIR/<dataset>/ exists runs as its mirror on the files found there (see tasks/lm-eval/README.md);
the YAMLs are copied to a temporary folder and their `_data.yaml` rewritten to point at the files.
A hub task whose dataset is neither cached nor reachable fails as one cell with one sentence that
says how to get it; the other tasks still run. When the Hub cannot be reached, datasets/hub
offline mode is switched on for the duration of the lm-eval call, so the failure takes a second
instead of datasets' ~25 s of retries per dataset.

Context length (`default_max_length`): static methods (pi, ntk, ntk-by-parts, yarn) get the extended
context factor × L; base and dynamic methods get L. Dynamic scaling is the identity for sequences
≤ L, so with the default a dynamic-X cell equals base; pass `max_length` to let longer prompts
through. lm-eval truncates longer prompts from the left. Dynamic methods run with batch size 1 (a
padded batch would set the scale from the longest sequence) and generate without KV cache (cached
keys would keep an earlier length's scale).

Modules: `protocol` (paper tasks, shots, headline metrics, context length), `mirrors` (the shipped
task YAMLs and pointing them at local files), `planning` (requested names → task plans),
`offline` (the message for a hub dataset that is not available), `lm` (the HFLM wrapper), `extract` (lm-eval
results → rows, provenance JSON), `run` (`run_leaderboard`), `passkey_data` (passkey_local's rows),
`prepare` and `make_prompts` (command line helpers for plain lm-eval use), `schema` (its result
table) and `task` (options, checks, summary: the registry's `TASK`). Import from the submodules.
"""
