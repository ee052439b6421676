"""Perplexity and the temperature sweep: `engine` (the windows, the loss, the cells) and `task`
(options, checks, summary: the registry's `PERPLEXITY` and `TEMPERATURE_SWEEP`)."""
