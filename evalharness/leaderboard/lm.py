"""The scaled model inside lm-eval's `HFLM`: the object itself (never reloaded) with an explicit
`max_length`, progress bars on/off, and generation that reuses the KV cache only where the RoPE
scale cannot change during it (`passkey.cache_reusable`, for dynamic scaling), with the prompt
prefilled in chunks when asked (`prefill_chunk`: transformers' `prefill_chunk_size`).

Progress: the task sets `lm.progress` to its cell's `progress.CellProgress` before lm-eval runs.
While it is enabled lm-eval's own request bars are off (their carriage returns would fill a log
file) and the cell's progress counts the tokens that pass through the decoder layers, with the
requests answered so far (`k / n requests`, counted where lm-eval hands each answer to its cache
hook, once per request) as its detail."""
from __future__ import annotations

import functools
from typing import Callable

from ..passkey.engine import cache_reusable
from ..prefill import cache_argument
from ..progress import CellProgress
from ..rerotate import rerotating_cache


class CountingCacheHook:
    """lm-eval's cache hook (`LM.set_cache_hook`) that also calls `on_answer` once per answered
    request, then hands the answer to the hook it replaces."""

    def __init__(self, inner, on_answer: Callable[[], None]):
        self.inner, self.on_answer = inner, on_answer

    def add_partial(self, attr, req, res) -> None:
        self.inner.add_partial(attr, req, res)
        self.on_answer()


@functools.lru_cache(maxsize=1)
def _harness_lm_class():
    # lazy: lm-eval's HFLM module takes ≈ 3.4 s to import (`python -c "import lm_eval.models.huggingface"`
    # on the 2-core CI machine); only a run with leaderboard or RULER cells pays it
    from lm_eval.models.huggingface import HFLM

    try:  # lm-eval ≥ 0.4.10 moved the HF helpers to utils_hf
        from lm_eval.models.utils_hf import stop_sequences_criteria
    except ImportError:  # pragma: no cover - older lm-eval
        from lm_eval.models.utils import stop_sequences_criteria

    class HarnessLM(HFLM):
        """HFLM over an already-loaded model: progress bars on/off, and (use_kv_cache=False, for
        dynamic scaling) generation with the KV cache only when `passkey.cache_reusable` holds from
        the prompt's length to the generation's last one, else every step a full forward (HFLM
        hard-codes use_cache=True). The scale s(l) = max(1, l/L) never decreases with l, so equal
        scales at both ends mean one scale for every step. `rerotate` (a dynamic evalharness
        method, `--dynamic-cache rerotate`): every generation on a fresh `rerotate.RerotatingCache`.
        `prefill_chunk` C: a generation on the plain KV cache prefills a prompt longer than C in
        chunks of C tokens (transformers' `prefill_chunk_size`)."""

        def __init__(self, *args, show_progress: bool = True, use_kv_cache: bool = True, rerotate: bool = False,
                     prefill_chunk: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.show_progress = show_progress
            self.use_kv_cache = use_kv_cache
            self.rerotate = rerotate
            self.prefill_chunk = prefill_chunk
            self.progress = CellProgress()  # the running cell's, set by the task (module docstring)

        def _counted(self, method, requests, disable_tqdm: bool):
            progress = self.progress
            quiet = disable_tqdm or not self.show_progress or progress.enabled
            if not progress.enabled:
                return method(requests, disable_tqdm=quiet)
            total, answered = len(requests), 0

            def on_answer() -> None:
                nonlocal answered
                answered += 1
                progress.advance(0, f"{answered:,} / {total:,} requests")

            inner = self.cache_hook
            progress.stage("processed")
            self.set_cache_hook(CountingCacheHook(inner, on_answer))
            try:
                with progress.layers(self.model):
                    return method(requests, disable_tqdm=quiet)
            finally:
                self.set_cache_hook(inner)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._counted(super().loglikelihood, requests, disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._counted(super().loglikelihood_rolling, requests, disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._counted(super().generate_until, requests, disable_tqdm)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            cache = rerotating_cache(self.model) if self.rerotate else None
            if cache is not None:
                generation_kwargs[cache_argument(self.model)] = cache
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            if self.use_kv_cache or cache_reusable(self.model, int(context.shape[1]), int(max_length)):
                if self.prefill_chunk is not None and self.prefill_chunk < context.shape[1]:
                    generation_kwargs["prefill_chunk_size"] = int(self.prefill_chunk)
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            temperature = generation_kwargs.pop("temperature", 0.0)
            if temperature == 0.0 and generation_kwargs.get("do_sample") is None:
                generation_kwargs["do_sample"] = False
            if not (generation_kwargs.get("do_sample") is False and temperature == 0.0):
                generation_kwargs["temperature"] = temperature
            criteria = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
            return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                       pad_token_id=self.tokenizer.pad_token_id, use_cache=False,
                                       **generation_kwargs)

    return HarnessLM


def wrap_model(model, tokenizer, max_length: int, batch_size: int = 1, show_progress: bool = True,
               use_kv_cache: bool = True, rerotate: bool = False, prefill_chunk: int | None = None):
    """The model object itself inside lm-eval's HFLM, with an explicit max_length."""
    return _harness_lm_class()(pretrained=model, tokenizer=tokenizer, max_length=int(max_length),
                               batch_size=int(batch_size), show_progress=show_progress, use_kv_cache=use_kv_cache,
                               rerotate=rerotate, prefill_chunk=prefill_chunk)

