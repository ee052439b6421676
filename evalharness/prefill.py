"""Chunked prefill: the decoder's forward over a long window in chunks of C tokens through the
model's own KV cache, each chunk's hidden states final (and scored) once it has run; dynamic methods
scale for the whole window's length, so the result equals the one-shot forward up to rounding.
`choose_prefill_chunk` / `plan_prefill` make the `--prefill-chunk` choice with its memory estimate.

Memory and cost: docs/models.md#chunked-prefill---prefill-chunk-nautooff
"""
from __future__ import annotations

import inspect
from typing import Iterator

import torch

from .memory import estimate_peak_bytes
from .options import DEFAULT_PREFILL_CHUNK, PREFILL_AUTO, PREFILL_OFF
from .scaling import StatelessNativeRotary, fixed_dynamic_length, rotary_modules

__all__ = ["DEFAULT_PREFILL_CHUNK", "PREFILL_AUTO", "PREFILL_OFF", "available_memory_bytes", "backbone",
           "cache_argument", "choose_prefill_chunk", "chunkable", "hidden_chunks", "last_hidden", "plan_prefill",
           "prefill_chunk_for"]

def backbone(model):
    """The decoder stack of a causal LM (its base model)."""
    return model.base_model if model.base_model is not model else model.get_decoder()


def cache_argument(model) -> str:
    """The name of the KV-cache argument of the model's forward (and `generate`): later
    transformers 5.x releases name it `cache`, earlier ones `past_key_values`."""
    return "cache" if "cache" in inspect.signature(backbone(model).forward).parameters else "past_key_values"


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _chunked_forward(model, input_ids: torch.Tensor, chunk: int):
    if chunk < 1:
        raise ValueError(f"prefill chunk {chunk} must be ≥ 1.")
    decoder, name = backbone(model), cache_argument(model)
    total = input_ids.shape[1]
    cache = None
    with fixed_dynamic_length(model, total):
        for start in range(0, total, chunk):
            kwargs = {} if cache is None else {name: cache}
            out = decoder(input_ids=input_ids[:, start:start + chunk], use_cache=True, **kwargs)
            cache = _returned_cache(out)
            yield start, _last_hidden(out), cache
            del out


def hidden_chunks(model, input_ids: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, final hidden states [1, c, H] of input_ids[:, start:start + c]) for consecutive chunks
    of `chunk` tokens, through the KV cache the model's forward creates (module docstring).
    input_ids: [1, T] on the model's input device. Dynamic methods scale for T throughout."""
    for start, hidden, _ in _chunked_forward(model, input_ids, chunk):
        yield start, hidden


def last_hidden(model, input_ids: torch.Tensor, chunk: int):
    """(final hidden state of the last position [1, H], the filled KV cache) after a chunked
    prefill of input_ids [1, T]; the cache holds every token (sliding layers: their window), as a
    one-shot forward with `use_cache=True` returns it."""
    hidden = cache = None
    for _, states, cache in _chunked_forward(model, input_ids, chunk):
        hidden = states[0, -1:]
    return hidden, cache


def choose_prefill_chunk(option: int | str | None, one_shot_bytes: float | None, available_bytes: float | None,
                         length: int) -> int | None:
    """The chunk a forward of `length` tokens runs with (None: one-shot). A number: that chunk
    (one-shot when the window is no longer). `off`/None: one-shot. `auto`: one-shot when its
    estimated peak fits in the available memory (or either is unknown), else `DEFAULT_PREFILL_CHUNK`."""
    if option in (None, PREFILL_OFF):
        return None
    if isinstance(option, int):
        return option if option < length else None
    if one_shot_bytes is None or available_bytes is None or one_shot_bytes <= available_bytes:
        return None
    return DEFAULT_PREFILL_CHUNK if DEFAULT_PREFILL_CHUNK < length else None


def available_memory_bytes(device) -> int | None:
    """Memory a forward may use on `device`: CUDA total memory of the device, else the system's
    MemAvailable (Linux); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def chunkable(model) -> bool:
    """Whether the chunked prefill can run the model as scaled now: not with the shipped dynamic
    RoPE (`native` of a length-dependent rope_type), whose length transformers reads from the
    positions of each forward."""
    return not any(isinstance(module, StatelessNativeRotary) for _, _, module in rotary_modules(model))


def plan_prefill(config, dtype, device, option: int | str | None, length: int, *, chunk_size: int | None = None,
                 attn_impl: str | None = None, n_params: int | None = None, kv_cache: bool = False,
                 can_chunk: bool = True) -> tuple[int | None, dict]:
    """(chunk or None for one-shot, the peak-memory estimate of that plan) for a forward of `length`
    tokens: `choose_prefill_chunk` with the one-shot estimate (`memory.estimate_peak_bytes`) and
    the memory of `device` (`available_memory_bytes`). `auto` stays one-shot when not `can_chunk`.
    The one function behind the engine's choice and the dry-run's line."""
    common = dict(chunk_size=chunk_size, attn_impl=attn_impl or "sdpa", n_params=n_params)
    one_shot = estimate_peak_bytes(config, dtype, length, kv_cache=kv_cache, **common)
    if option == PREFILL_AUTO and not can_chunk:
        return None, one_shot
    chunk = choose_prefill_chunk(option, one_shot["total"], available_memory_bytes(device), length)
    if chunk is None:
        return None, one_shot
    return chunk, estimate_peak_bytes(config, dtype, length, kv_cache=kv_cache, prefill_chunk=chunk, **common)


def prefill_chunk_for(model, option: int | str | None, length: int, chunk_size: int | None = None,
                      kv_cache: bool = False) -> int | None:
    """The chunk a forward of `length` tokens on the loaded `model` runs with (None: one-shot),
    by `plan_prefill`."""
    if option in (None, PREFILL_OFF):
        return None
    attn_impl = getattr(model.config, "_attn_implementation", None)
    n_params = sum(p.numel() for p in model.parameters())
    chunk, _ = plan_prefill(model.config, model.dtype, model.device, option, length, chunk_size=chunk_size,
                            attn_impl=attn_impl, n_params=n_params, kv_cache=kv_cache, can_chunk=chunkable(model))
    return chunk
