"""RULER through lm-eval's own tasks: `engine` (task resolution, length checks, the cells) and
`task` (options, checks, summary: the registry's `TASK`)."""
