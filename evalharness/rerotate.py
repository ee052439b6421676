"""`RerotatingCache`: a KV cache for dynamic scaling that keeps every cached key rotated at the
current length's scale, re-rotating the cached keys in place whenever the scale changes (the YaRN
paper's advice, arXiv 2309.00071 §3.3). Deeper layers' cached keys and values stay those computed
at each token's own step.

Formula and cost: docs/performance.md#re-rotated-kv-cache
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .scaling import ScaledRotaryEmbedding, rotary_modules

MODES = ("recompute", "rerotate")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotation(old: tuple[torch.Tensor, float], new: tuple[torch.Tensor, float], positions: int,
             device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(cos, sin [positions, rotary_dim], attention ratio) that turn keys rotated with
    (inv_freq, attention) `old` at positions 0…positions−1 into keys rotated with `new`. The angle
    differences are computed in float64: p · (θ_new − θ_old)."""
    old_freq, old_attention = old
    new_freq, new_attention = new
    steps = torch.arange(positions, dtype=torch.float64, device=device)
    delta = steps[:, None] * (new_freq.to(device, torch.float64) - old_freq.to(device, torch.float64))
    angles = torch.cat((delta, delta), dim=-1)
    return angles.cos().to(torch.float32), angles.sin().to(torch.float32), new_attention / old_attention


def turn_keys(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keys [batch, heads, positions, head_dim] turned by a `rotation` on their first rotary_dim
    channels (the others pass through)."""
    rotary_dim = cos.shape[-1]
    rotary = keys[..., :rotary_dim].float()
    turned = (rotary * cos + _rotate_half(rotary) * sin) * ratio
    return torch.cat((turned.to(keys.dtype), keys[..., rotary_dim:]), dim=-1)


def rerotate_keys(keys: torch.Tensor, old: tuple[torch.Tensor, float], new: tuple[torch.Tensor, float]) -> torch.Tensor:
    """Keys [batch, heads, positions, head_dim] rotated with (inv_freq, attention) `old` at
    positions 0…P−1, rotated and scaled as (inv_freq, attention) `new` would have done it."""
    return turn_keys(keys, *rotation(old, new, keys.shape[-2], keys.device))


class RerotatingCache(DynamicCache):
    """transformers' DynamicCache whose cached keys follow the dynamic scale (module docstring).
    `rotary` is the model's `ScaledRotaryEmbedding`; `layer_types[i]` the rotary geometry key of
    decoder layer i (None for single-RoPE models)."""

    def __init__(self, rotary, layer_types=None, **kwargs):
        super().__init__(**kwargs)
        self.rotary = rotary
        self.layer_types = layer_types
        self.rotated_at: dict[int, int] = {}  # layer → the length whose scale its cached keys carry
        self.rerotations = 0
        self._rotations: dict = {}  # this step's rotation per (from, to, layer type): every layer shares it

    def _rotation(self, built: int, length: int, layer_type, positions: int, device):
        key = (built, length, layer_type, positions)
        if key not in self._rotations:
            self._rotations = {key: rotation(self.rotary.frequencies(built, layer_type),
                                             self.rotary.frequencies(length, layer_type), positions, device)}
        return self._rotations[key]

    def _layer_type(self, layer_idx: int):
        return None if self.layer_types is None else self.layer_types[layer_idx]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        cached = self.get_seq_length(layer_idx) if layer_idx < len(self.layers) else 0
        length = cached + key_states.shape[-2]
        if cached:
            spec = self.rotary.spec
            built = self.rotated_at[layer_idx]
            if spec.scale_at(built) != spec.scale_at(length):
                layer = self.layers[layer_idx]
                layer.keys = turn_keys(layer.keys, *self._rotation(built, length, self._layer_type(layer_idx),
                                                                   cached, layer.keys.device))
                self.rerotations += 1
        self.rotated_at[layer_idx] = length
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def dynamic_rotary(model):
    """The model's `ScaledRotaryEmbedding` when it applies a dynamic method, else None."""
    for _, _, module in rotary_modules(model):
        if isinstance(module, ScaledRotaryEmbedding) and module.spec.is_dynamic:
            return module
    return None


def rerotating_cache(model) -> RerotatingCache | None:
    """A fresh `RerotatingCache` for `model`, or None when the model's rotary modules are not a
    dynamic evalharness method (static methods need no re-rotation; a shipped dynamic type keeps
    transformers' own module, whose frequencies this cache cannot compute)."""
    rotary = dynamic_rotary(model)
    if rotary is None:
        return None
    layer_types = None
    if set(rotary.geometry) != {None}:
        layer_types = list(getattr(model.config.get_text_config(), "layer_types", None) or [])
    return RerotatingCache(rotary, layer_types or None)
