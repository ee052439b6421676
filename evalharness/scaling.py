"""Apply a `ScalingSpec` to a loaded transformers model: every rotary-embedding module is swapped for
a `ScaledRotaryEmbedding` computing cos/sin from `methods.rope_frequencies` (the original kept,
`restore_original`; another spec needs no reload). Dynamic methods use s = max(1, l/L) for the
current forward's length l. L lives in the spec; `config.max_position_embeddings` is never modified.

Behaviour, `native` and the KV-cache trap: docs/models.md#applying-a-method
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .errors import EvalHarnessError
from .methods import ScalingSpec, native_display, ntk_aware_base, rope_frequencies

_ORIGINAL = "_evalharness_original_rotary"
_NATIVE_CTX = "_evalharness_native_ctx"


class ScalingError(EvalHarnessError, ValueError):
    """The model cannot be scaled (no RoPE, unknown rotary layout)."""


class ScaledRotaryEmbedding(nn.Module):
    """Drop-in replacement for a transformers `*RotaryEmbedding`: returns (cos, sin) of shape
    [batch, seq, rotary_dim] in `x.dtype`, multiplied by the method's attention scale.

    `geometry` maps layer_type (None for single-RoPE models) → (rotary_dim, base, scaled); layer
    types that are not scaled (Gemma-3's sliding-window layers unless the spec says `layers=all`)
    keep base RoPE.

    `dynamic_length`, when set (`fixed_dynamic_length`), is the sequence length a dynamic method
    scales for, instead of the current forward's max position + 1: a chunked prefill sets it to the
    whole window's length, so every chunk rotates at the scale the one-shot forward uses.
    """

    def __init__(self, spec: ScalingSpec, geometry: dict, original: nn.Module):
        super().__init__()
        self.spec = spec
        self.geometry = geometry
        self.original = [original]  # a list keeps it out of this module's children/state_dict
        self._static: dict = {}
        self.dynamic_length: int | None = None

    def extra_repr(self) -> str:
        return f"spec={self.spec}, geometry={self.geometry}"

    def frequencies(self, seq_len: int, layer_type=None) -> tuple[torch.Tensor, float]:
        """inv_freq and attention scale for a forward whose sequence spans `seq_len` positions."""
        rotary_dim, base, scaled = self.geometry[layer_type]
        spec = self.spec if scaled else ScalingSpec("base")
        if not spec.is_dynamic:
            key = layer_type
            if key not in self._static:
                self._static[key] = rope_frequencies(spec, rotary_dim, base)
            return self._static[key]
        return rope_frequencies(spec, rotary_dim, base, seq_len=seq_len)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
        seq_len = 0
        if self.spec.is_dynamic:
            seq_len = self.dynamic_length or int(position_ids.max()) + 1
        inv_freq, attention = self.frequencies(seq_len, layer_type)
        inv_freq = inv_freq.to(device=x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            angles = position_ids[..., None].to(torch.float32) * inv_freq
            emb = torch.cat((angles, angles), dim=-1)
            cos, sin = emb.cos(), emb.sin()
            if attention != 1.0:
                cos, sin = cos * attention, sin * attention
        return cos.to(x.dtype), sin.to(x.dtype)


class StatelessNativeRotary(nn.Module):
    """The model's own rotary module with its length cache cleared before every forward, so a
    shipped length-dependent rope_type (transformers' `dynamic_rope_update`) computes the
    frequencies of the current length (max position + 1), whatever lengths came before."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = [original]  # not a child: the original stays out of this module's state_dict

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
        original = self.original[0]
        for name in list(vars(original)):
            if name.endswith("max_seq_len_cached"):
                setattr(original, name, 0)  # every length counts as growth: recomputed for this length
        if layer_type is None:
            return original(x, position_ids)
        return original(x, position_ids, layer_type=layer_type)


_WRAPPERS = (ScaledRotaryEmbedding, StatelessNativeRotary)


def rotary_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) for every rotary-embedding module of the model, in the
    library's standard layout: a module class named `*RotaryEmbedding` holding an `inv_freq`
    (or one already replaced by us)."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, _WRAPPERS) or (
                type(child).__name__.endswith("RotaryEmbedding") and _has_inv_freq(child)
            ):
                found.append((parent, name, child))
    return found


def _has_inv_freq(module: nn.Module) -> bool:
    return any(name.endswith("inv_freq") for name, _ in module.named_buffers(recurse=False)) or hasattr(
        module, "inv_freq"
    )


def rope_geometry(config, layers: str = "global") -> dict:
    """layer_type → (rotary_dim, base, scaled) read from a transformers v5 config
    (`config.rope_parameters`, possibly nested per layer type). `layers` (`ScalingSpec.layers`):
    `global` scales the full-attention layer types only, `all` every layer type."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = getattr(text_config, "rope_parameters", None)
    if not params:
        raise ScalingError(f"{type(config).__name__} has no rope_parameters: the model does not use RoPE.")
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    if "rope_theta" in params:
        return {None: _layer_geometry(params, head_dim, text_config, scaled=True)}
    geometry = {}
    for layer_type, sub in params.items():
        # Only full-attention layers see long context; sliding-window layers keep base RoPE.
        scaled = layers == "all" or "sliding" not in layer_type
        geometry[layer_type] = _layer_geometry(sub, head_dim, text_config, scaled=scaled)
    return geometry


def layer_rope_bases(config) -> dict:
    """layer_type → rope base for configs with RoPE per layer type (Gemma 3: `full_attention` 1e6,
    `sliding_attention` 1e4); {} for one RoPE for every layer (or none)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = getattr(text_config, "rope_parameters", None) or {}
    if "rope_theta" in params:
        return {}
    return {layer_type: float(sub["rope_theta"]) for layer_type, sub in params.items()
            if isinstance(sub, dict) and "rope_theta" in sub}


def check_layers(spec: ScalingSpec, config) -> None:
    """ScalingError when the spec asks for `layers=all` on a model with one RoPE for every layer
    (the option would change nothing)."""
    if spec.layers != "global" and len(layer_rope_bases(config)) < 2:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        raise ScalingError(f"{spec}: layers={spec.layers} needs a model with RoPE per layer type (Gemma 3's "
                           f"sliding and global layers); {text_config.model_type} has one RoPE for every layer, "
                           "so drop the option.")


@contextlib.contextmanager
def fixed_dynamic_length(model: nn.Module, length: int):
    """Within the block, dynamic methods on `model` scale for a sequence of `length` positions
    whatever positions a forward sees (the chunked prefill's chunks see a part of the window).
    Only the harness's own rotary modules know the option; the shipped dynamic RoPE (`native` of a
    dynamic rope_type) raises ScalingError, since transformers reads the length from the positions."""
    modules = [module for _, _, module in rotary_modules(model)]
    if any(isinstance(module, StatelessNativeRotary) for module in modules):
        raise ScalingError("the chunked prefill cannot fix the length of the shipped dynamic RoPE (native); "
                           "use --prefill-chunk off for it.")
    for module in modules:
        if isinstance(module, ScaledRotaryEmbedding):
            module.dynamic_length = int(length)
    try:
        yield
    finally:
        for module in modules:
            if isinstance(module, ScaledRotaryEmbedding):
                module.dynamic_length = None


def _layer_geometry(params: dict, head_dim: int, config, scaled: bool) -> tuple[int, float, bool]:
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)
    return int(head_dim * partial), float(params["rope_theta"]), scaled


def original_context(config) -> int:
    """L, the context a model was pre-trained with, from its config: `original_max_position_embeddings`
    (in its RoPE parameters or the config itself) when it has one (models fine-tuned with RoPE
    scaling, e.g. Yarn-Llama-2-7b-64k: 4096), else `max_position_embeddings`. The one definition:
    `native_context`, `models.ModelInfo.native_ctx` (run banner, `methods --model`, report.md) read it."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    original = _shipped_params(config).get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None)
    return int(original or config.max_position_embeddings)


def native_context(model: nn.Module) -> int:
    """`original_context` of the model's config as it was the first time this module saw the model
    (later edits of the config do not move it)."""
    if not hasattr(model, _NATIVE_CTX):
        setattr(model, _NATIVE_CTX, original_context(model.config))
    return getattr(model, _NATIVE_CTX)


@dataclass(frozen=True)
class ShippedRope:
    """What a model's config ships: rope_type, its factor (1 when it has none) and the L at which
    transformers' implementation of that type starts scaling."""

    rope_type: str
    factor: float
    original_ctx: int
    rope_theta: float

    @property
    def is_scaled(self) -> bool:
        return self.rope_type != "default"

    @property
    def display(self) -> str:
        return native_display(self.rope_type, self.factor)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _shipped_params(config) -> dict:
    """The (full-attention) rope_parameters dict of a text config; {} without one."""
    params = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" in params or "rope_type" in params:
        return params
    nested = [v for k, v in params.items() if isinstance(v, dict) and "sliding" not in k]
    return nested[0] if nested else {}


def shipped_rope(config) -> ShippedRope:
    """Read the shipped RoPE from a transformers v5 config. L: `max_position_embeddings` for the
    dynamic types (transformers' `dynamic` scales by l/max_position_embeddings), else
    `original_max_position_embeddings` when present, else `max_position_embeddings`. The factor
    falls back to max_position_embeddings / original_max_position_embeddings (as transformers'
    yarn does) and then to 1."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = _shipped_params(text_config)
    rope_type = str(params.get("rope_type") or params.get("type") or "default")
    max_pos = int(text_config.max_position_embeddings)
    original = params.get("original_max_position_embeddings") or getattr(
        text_config, "original_max_position_embeddings", None)
    factor = params.get("factor")
    if factor is None and original:
        factor = max_pos / int(original) if rope_type != "default" else 1.0
    length = max_pos if "dynamic" in rope_type else int(original or max_pos)
    return ShippedRope(rope_type, float(factor or 1.0), length, float(params.get("rope_theta", float("nan"))))


def rope_note(model: nn.Module) -> dict:
    """The manifest's record of the model's RoPE: what ships, the default L, and what `base` is."""
    shipped = shipped_rope(model.config)
    bases = layer_rope_bases(model.config)
    base = f"plain RoPE with rope_theta={shipped.rope_theta:g}"
    if bases:
        base = "plain RoPE with rope_theta " + ", ".join(f"{t} {b:g}" for t, b in bases.items()) + (
            "; methods scale the full-attention layers only unless the spec says layers=all")
    if shipped.is_scaled:
        shipped_text = shipped.display.removeprefix("native (").removesuffix(")")
        base += f", not the shipped {shipped_text}; `native` evaluates the shipped RoPE"
    note = {"shipped": shipped.as_dict(), "native": shipped.display, "default_original_ctx": native_context(model),
            "base": base}
    if bases:
        note["layer_rope_theta"] = bases
    return note


def resolve_native(spec: ScalingSpec, config) -> ScalingSpec:
    """`native` with the shipped rope_type, factor and L filled in (the spec's own L is ignored:
    the shipped RoPE decides where it starts scaling)."""
    shipped = shipped_rope(config)
    return dataclasses.replace(spec, native_type=shipped.rope_type, factor=shipped.factor,
                               original_ctx=shipped.original_ctx)


def resolve_spec(model: nn.Module, spec: ScalingSpec) -> ScalingSpec:
    """`spec` as applying it to `model` runs it and its rows name it: `native` resolved with what
    ships (`resolve_native`), any other method with `original_ctx` defaulting to the model's
    pre-trained context (`native_context`). Resolving a resolved spec returns it unchanged."""
    if spec.method == "native":
        return resolve_native(spec, model.config)
    check_layers(spec, model.config)
    return spec if spec.original_ctx is not None else spec.with_original_ctx(native_context(model))


def check_supported(model: nn.Module) -> list:
    """The model's rotary modules; ScalingError naming the model class when there are none or when its
    config's RoPE cannot be computed (rope_theta ≤ 1 or not finite, an odd rotary dimension)."""
    modules = rotary_modules(model)
    if not modules:
        raise ScalingError(
            f"{type(model).__name__} has no rotary position embedding in the standard transformers "
            "layout (a `*RotaryEmbedding` module with `inv_freq`), so RoPE scaling cannot be applied."
        )
    try:
        geometry = rope_geometry(model.config)
    except ScalingError:  # rotary modules without rope_parameters: nothing to check here
        geometry = {}
    for rotary_dim, base, _ in geometry.values():
        if not (math.isfinite(base) and base > 1) or rotary_dim <= 0 or rotary_dim % 2:
            raise ScalingError(f"{type(model).__name__}'s config has rope_theta {base:g} and a rotary dimension "
                               f"{rotary_dim}; RoPE needs a finite base > 1 (e.g. 10000) and a positive even "
                               "dimension.")
    return modules


def apply_scaling(model: nn.Module, spec: ScalingSpec | str) -> ScalingSpec:
    """Scale the model's RoPE in place and return the resolved spec (original_ctx filled in).

    Re-applying another spec replaces the previous one (no reload). `base` is plain RoPE computed
    by the same code path as every method, so methods differ from base only by their math.
    """
    if isinstance(spec, str):
        spec = ScalingSpec.parse(spec)
    modules = check_supported(model)
    native_context(model)
    spec = resolve_spec(model, spec)
    if spec.method == "native":
        return apply_native(model, spec, modules)
    geometry = rope_geometry(model.config, spec.layers)
    _warn_if_shipped_scaling(model.config)
    for parent, name, module in modules:
        original = module.original[0] if isinstance(module, _WRAPPERS) else module
        setattr(parent, name, ScaledRotaryEmbedding(spec, geometry, original))
    model._evalharness_spec = spec
    return spec


def apply_native(model: nn.Module, spec: ScalingSpec, modules: list) -> ScalingSpec:
    """Put back the model's own rotary modules (stateless for length-dependent rope_types);
    `spec` is `native` already resolved (`resolve_spec`)."""
    for parent, name, module in modules:
        original = module.original[0] if isinstance(module, _WRAPPERS) else module
        setattr(parent, name, StatelessNativeRotary(original) if spec.is_dynamic else original)
    model._evalharness_spec = spec
    return spec


def restore_original(model: nn.Module) -> None:
    """Put back the rotary modules the model was loaded with."""
    for parent, name, module in rotary_modules(model):
        if isinstance(module, _WRAPPERS):
            setattr(parent, name, module.original[0])
    model._evalharness_spec = None


def _warn_if_shipped_scaling(config) -> None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = text_config.rope_parameters
    types = {params.get("rope_type", "default")} if "rope_theta" in params else {
        sub.get("rope_type", "default") for sub in params.values()
    }
    if types - {"default"} and not getattr(config, "_evalharness_warned", False):
        warnings.warn(
            f"the model ships with RoPE scaling {sorted(types)}; evalharness methods start from plain "
            "RoPE with the same rope_theta, so `base` is unscaled RoPE, not the shipped scaling "
            "(`--method native` evaluates the shipped one).",
            stacklevel=3,
        )
        config._evalharness_warned = True


def current_spec(model: nn.Module) -> ScalingSpec | None:
    return getattr(model, "_evalharness_spec", None)


def export_rope_parameters(spec: ScalingSpec, config) -> dict:
    """The transformers v5 `rope_parameters` dict that makes the library do `spec` natively.

    Supported: base → default; pi → linear; ntk → default with the NTK-aware rope_theta;
    dynamic-ntk → dynamic (factor 1: transformers' s = factor·l/L − (factor−1) equals l/L);
    yarn → yarn. transformers' dynamic rope_type reads L from config.max_position_embeddings: for
    dynamic-ntk set that to L as well (`requires_max_position_embeddings`). The config is not touched.
    """
    geometry = rope_geometry(config)
    if None not in geometry:
        raise ScalingError("export_rope_parameters supports single-RoPE configs only (not per-layer-type RoPE).")
    rotary_dim, base, _ = geometry[None]
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    original_ctx = spec.original_ctx or int(text_config.max_position_embeddings)
    params: dict = {"rope_theta": base}
    partial = text_config.rope_parameters.get("partial_rotary_factor")
    if partial is not None:
        params["partial_rotary_factor"] = partial
    if spec.method == "base":
        params["rope_type"] = "default"
    elif spec.method == "pi":
        params.update(rope_type="linear", factor=spec.factor)
    elif spec.method == "ntk":
        params.update(rope_type="default", rope_theta=ntk_aware_base(base, rotary_dim, spec.factor))
    elif spec.method == "dynamic-ntk":
        params.update(rope_type="dynamic", factor=1.0)
    elif spec.method == "yarn":
        params.update(
            rope_type="yarn",
            factor=spec.factor,
            original_max_position_embeddings=original_ctx,
            beta_fast=spec.beta_fast,
            beta_slow=spec.beta_slow,
            truncate=spec.truncate,
        )
        if spec.attention_factor is not None:
            params["attention_factor"] = spec.attention_factor
    else:
        raise ScalingError(
            f"transformers has no native rope_type for {spec.method}; natively supported: "
            "base, pi, ntk, dynamic-ntk, yarn (use apply_scaling for the others)."
        )
    return params


def requires_max_position_embeddings(spec: ScalingSpec) -> bool:
    """True when transformers' native form reads L from config.max_position_embeddings."""
    return spec.method == "dynamic-ntk"
