"""RoPE context-extension methods as pure math.

One function per method maps (spec, rotary dimension |D|, rope base b, scale s) to the inverse
frequencies θ'_d (d = 0 … |D|/2−1) and the factor that multiplies cos and sin (the attention
temperature of YaRN). Dynamic methods reuse the static functions with a scale computed from the
current sequence length. Nothing here touches a model. The registry pairs each function with
the torch-free facts of `method_facts` (names, labels, which methods take a factor or are dynamic).

Notation and formulas follow the YaRN paper (Peng et al., arXiv 2309.00071, §2–3 and App. A):
    θ_d = b^(−2d/|D|),   λ_d = 2π/θ_d,   s = L'/L.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import EvalHarnessError
from .method_facts import (
    ALIASES,
    METHOD_FACTS,
    MethodFacts,
    native_display,
    native_type_is_dynamic,
    yarn_mscale,
)
from .options import MAX_FACTOR

# cos/sin multiplier bound: YaRN's own 0.1·ln(s)+1 is 1.83 at the largest factor; past 10 the
# attention logits (× its square) overflow in half precision and the run would only record NaNs
MAX_ATTENTION_FACTOR = 10.0


class MethodError(EvalHarnessError, ValueError):
    """A scaling spec that does not make sense (unknown method, bad factor, ...)."""


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScalingSpec:
    """What to do to a model's rotary embedding.

    method:            a registry name (see `METHODS`), aliases resolved by `canonical_method`.
    factor:            scale s = L'/L for static methods. Dynamic methods compute s from the
                       sequence length instead (s = max(1, l/L)) and ignore it; `base` ignores it.
    original_ctx:      L, the pre-trained context. None = the model's native context (filled in
                       by `scaling.apply_scaling`).
    beta_fast/slow:    ramp bounds in rotations over L (YaRN's β=32, α=1 for Llama).
    attention_factor:  override of the cos/sin multiplier (YaRN default 0.1·ln(s)+1).
    truncate:          round the ramp bounds to integers (floor/ceil) as the authors' code does;
                       False keeps them fractional.
    native_type:       `native` only: the transformers rope_type the model ships with (`yarn`,
                       `linear`, `dynamic`, `longrope`, …), filled in by `scaling.apply_scaling`
                       together with the shipped factor and L. None = not resolved yet.
    layers:            on models whose layers have RoPE of their own per layer type (Gemma 3:
                       sliding-window layers with base 10^4, global layers with base 10^6), which
                       layers the method scales: `global` (full-attention layers only, as Google's
                       long-context Gemma 3 checkpoints do; the default) or `all` (the local
                       sliding-window layers too, each with its own base). `scaling` refuses `all`
                       on a model with one RoPE for every layer.
    """

    method: str
    factor: float = 1.0
    original_ctx: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True
    native_type: str | None = None
    layers: str = "global"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", canonical_method(self.method))
        entry = METHODS[self.method]
        factor = float(self.factor)
        if not math.isfinite(factor) or factor <= 0 or factor > MAX_FACTOR:
            raise MethodError(f"factor {self.factor!r} is not valid: it must be a number > 0 and ≤ {MAX_FACTOR:g}.")
        if entry.uses_factor and factor < 1:
            raise MethodError(
                f"factor {self.factor!r} is < 1, which would shrink the context of {self.method}; "
                "use a factor >= 1."
            )
        if not entry.uses_factor and not (self.method == "native" and self.native_type is not None):
            factor = 1.0  # base and dynamic methods do not read it; normalise so grids dedupe
        object.__setattr__(self, "factor", factor)
        if self.original_ctx is not None and int(self.original_ctx) <= 0:
            raise MethodError(f"original context {self.original_ctx!r} is not valid: it must be > 0.")
        if not (math.isfinite(self.beta_fast) and self.beta_fast > self.beta_slow > 0):
            raise MethodError(
                f"beta_fast={self.beta_fast} / beta_slow={self.beta_slow} are not valid: "
                "need beta_fast > beta_slow > 0 (Llama: 32 and 1)."
            )
        if self.attention_factor is not None and not 0 < self.attention_factor <= MAX_ATTENTION_FACTOR:
            raise MethodError(f"attention_factor {self.attention_factor!r} is not valid: it must be > 0 and "
                              f"≤ {MAX_ATTENTION_FACTOR:g}.")
        if self.layers not in LAYER_CHOICES:
            raise MethodError(f"layers {self.layers!r} is not valid: use {' or '.join(LAYER_CHOICES)}.")
        if self.layers != "global" and not METHODS[self.method].reads("layers"):
            raise MethodError(f"layers={self.layers} does not apply to {self.method}: it scales no layer.")

    @property
    def is_dynamic(self) -> bool:
        """Whether the frequencies depend on the sequence length (one pass per length). `native`
        is dynamic when the shipped rope_type is (`native_type_is_dynamic`)."""
        if self.method == "native":
            return self.native_type is not None and native_type_is_dynamic(self.native_type)
        return METHODS[self.method].dynamic

    def with_original_ctx(self, original_ctx: int) -> "ScalingSpec":
        return dataclasses.replace(self, original_ctx=int(original_ctx))

    def scale_at(self, seq_len: int | None) -> float:
        """The scale s in effect: `factor` for static methods, max(1, seq_len / L) for dynamic ones."""
        if not self.is_dynamic:
            return self.factor
        if seq_len is None:
            return 1.0
        if self.original_ctx is None:
            raise MethodError(f"{self}: a dynamic method needs original_ctx to turn a length into a scale.")
        return max(1.0, seq_len / self.original_ctx)

    # ---- text form -----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, **defaults) -> "ScalingSpec":
        """Parse `method[:factor][:key=value...]`, e.g. `yarn:16`, `pi:4:original_ctx=4096`,
        `yarn:2:attention_factor=1.1:truncate=false`. Keyword `defaults` fill what the text omits."""
        parts = [p.strip() for p in str(text).strip().split(":")]
        if not parts or not parts[0]:
            raise MethodError(f"empty method spec {text!r}; valid methods: {', '.join(method_names())}.")
        kwargs: dict = dict(defaults)
        kwargs["method"] = parts[0]
        rest = parts[1:]
        given: set[str] = set()
        if rest and "=" not in rest[0]:
            kwargs["factor"] = _parse_number(rest[0], "factor", text)
            rest = rest[1:]
            given.add("factor")
        for item in rest:
            key, sep, value = item.partition("=")
            key = _KEY_ALIASES.get(key.strip(), key.strip())
            if not sep or key not in _FIELD_PARSERS:
                raise MethodError(
                    f"cannot read {item!r} in spec {text!r}; expected key=value with key in "
                    f"{', '.join(sorted(_FIELD_PARSERS))}."
                )
            if key in given:  # the last would win silently
                raise MethodError(f"{key} is given twice in spec {text!r}; give each option once.")
            given.add(key)
            kwargs[key] = _FIELD_PARSERS[key](value.strip(), key, text)
        return cls(**kwargs)

    def __str__(self) -> str:
        """Round-trippable short form: `yarn:16`, `base`, `yarn:2:attention_factor=1.1`, `native`."""
        if self.method == "native":
            return "native"
        out = self.method
        if METHODS[self.method].uses_factor:
            out += f":{_fmt(self.factor)}"
        return out + self._options(("original_ctx",) + _OPTION_FIELDS)

    @property
    def short(self) -> str:
        """`str()` without the original context: `yarn:16`, `dynamic-yarn`."""
        return str(dataclasses.replace(self, original_ctx=None))

    @property
    def label(self) -> str:
        """The `method` column of result tables: the method and its non-default options, without
        factor and original context (those have columns of their own). `yarn`, `yarn:truncate=false`,
        `native:rope_type=yarn` (what the model ships)."""
        if self.method == "native":
            return "native" + (f":rope_type={self.native_type}" if self.native_type else "")
        return self.method + self._options(_OPTION_FIELDS)

    @property
    def display(self) -> str:
        """Human-readable name: `native (yarn s=16)`, `native (default)`, else `str(self)`."""
        if self.method == "native":
            return native_display(self.native_type, self.factor)
        return str(self)

    def _options(self, fields: tuple[str, ...]) -> str:
        default = ScalingSpec(self.method)
        out = ""
        for field in fields:
            value = getattr(self, field)
            if value != getattr(default, field) and METHODS[self.method].reads(field):
                out += f":{field}={_fmt(value)}"
        return out


_OPTION_FIELDS = ("beta_fast", "beta_slow", "attention_factor", "truncate", "layers")
LAYER_CHOICES = ("global", "all")  # ScalingSpec.layers

def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_number(value: str, key: str, text: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise MethodError(f"{key} {value!r} in spec {text!r} is not a number.") from None
    if not math.isfinite(number):
        raise MethodError(f"{key} {value!r} in spec {text!r} is not a finite number.")
    return number


def _parse_int(value: str, key: str, text: str) -> int:
    number = _parse_number(value, key, text)
    if not number.is_integer():
        raise MethodError(f"{key} {value!r} in spec {text!r} must be an integer.")
    return int(number)


def _parse_layers(value: str, key: str, text: str) -> str:
    if value.lower() not in LAYER_CHOICES:
        raise MethodError(f"{key} {value!r} in spec {text!r} must be {' or '.join(LAYER_CHOICES)}.")
    return value.lower()


def _parse_bool(value: str, key: str, text: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise MethodError(f"{key} {value!r} in spec {text!r} must be true or false.")


_FIELD_PARSERS: dict[str, Callable] = {
    "factor": _parse_number,
    "original_ctx": _parse_int,
    "beta_fast": _parse_number,
    "beta_slow": _parse_number,
    "attention_factor": _parse_number,
    "truncate": _parse_bool,
    "layers": _parse_layers,
}
_KEY_ALIASES = {"L": "original_ctx", "s": "factor", "mscale": "attention_factor"}


# ---------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------

def base_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    """θ_d = b^(−2d/|D|) for d = 0 … |D|/2−1, in float32 (computed in float64, then rounded)."""
    check_dims(rotary_dim, base)
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return (1.0 / (base ** exponent)).to(torch.float32)


def check_dims(rotary_dim: int, base: float) -> None:
    """MethodError (one sentence) unless |D| is a positive even number and the base b > 1."""
    if rotary_dim <= 0 or rotary_dim % 2:
        raise MethodError(f"rotary dimension {rotary_dim} is not valid: it must be a positive even number.")
    if not base > 1:
        raise MethodError(f"rope base {base} is not valid: it must be > 1.")


def ntk_aware_base(base: float, rotary_dim: int, scale: float) -> float:
    """NTK-aware base change: b' = b · s^(|D|/(|D|−2)) (YaRN paper §3.1, eq. 16)."""
    if rotary_dim <= 2:
        raise MethodError(f"NTK-aware scaling needs a rotary dimension above 2 (its exponent is |D|/(|D|−2)); "
                          f"this one is {rotary_dim}.")
    return base * scale ** (rotary_dim / (rotary_dim - 2))


def correction_dim(n_rotations: float, rotary_dim: int, base: float, original_ctx: int) -> float:
    """The (fractional) pair index d at which wavelength λ_d fits `n_rotations` times into L:
    r_d = L/λ_d = n  ⇔  d = |D| · ln(L / (2π n)) / (2 ln b)."""
    return rotary_dim * math.log(original_ctx / (2 * math.pi * n_rotations)) / (2 * math.log(base))


def ramp_bounds(spec: ScalingSpec, rotary_dim: int, base: float) -> tuple[float, float]:
    """(low, high) pair indices of the NTK-by-parts ramp: pairs below `low` (more than β_fast
    rotations over L) keep θ_d, pairs above `high` (fewer than β_slow) are interpolated θ_d/s.
    Integer bounds (floor/ceil) when `spec.truncate`, clipped to [0, |D|−1]."""
    if spec.original_ctx is None:
        raise MethodError(f"{spec}: the ramp needs original_ctx (the model's pre-trained context).")
    low = correction_dim(spec.beta_fast, rotary_dim, base, spec.original_ctx)
    high = correction_dim(spec.beta_slow, rotary_dim, base, spec.original_ctx)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


def interpolation_ramp(low: float, high: float, n_pairs: int) -> torch.Tensor:
    """γ'_i = clamp((i − low)/(high − low), 0, 1) over pair indices i: 0 keeps θ_i, 1 divides by s.
    (The authors' ramp is linear in the pair index; `high` gets +0.001 when equal to `low`.)"""
    if high == low:
        high = high + 0.001
    index = torch.arange(n_pairs, dtype=torch.float64)
    return ((index - low) / (high - low)).clamp(0.0, 1.0)


def by_parts_inv_freq(spec: ScalingSpec, rotary_dim: int, base: float, scale: float) -> torch.Tensor:
    """NTK-by-parts: θ'_d = (1−γ_d)·θ_d + γ_d·θ_d/s, γ the interpolation ramp (paper §3.2, eq. 18–19)."""
    if scale == 1.0:
        return base_inv_freq(rotary_dim, base)
    theta = base_inv_freq(rotary_dim, base).to(torch.float64)
    low, high = ramp_bounds(spec, rotary_dim, base)
    gamma = interpolation_ramp(low, high, rotary_dim // 2)
    return ((1 - gamma) * theta + gamma * theta / scale).to(torch.float32)


FrequencyFn = Callable[[ScalingSpec, int, float, float], tuple[torch.Tensor, float]]


def rope_base(spec: ScalingSpec, rotary_dim: int, base: float, scale: float):
    """Unmodified RoPE: θ_d, attention 1."""
    return base_inv_freq(rotary_dim, base), 1.0


def rope_pi(spec: ScalingSpec, rotary_dim: int, base: float, scale: float):
    """Position Interpolation (Chen et al. 2023): θ_d / s, i.e. positions divided by s."""
    return (base_inv_freq(rotary_dim, base).to(torch.float64) / scale).to(torch.float32), 1.0


def rope_ntk(spec: ScalingSpec, rotary_dim: int, base: float, scale: float):
    """NTK-aware: θ_d computed with base b' = b · s^(|D|/(|D|−2)); attention 1."""
    return base_inv_freq(rotary_dim, ntk_aware_base(base, rotary_dim, scale)), 1.0


def rope_ntk_by_parts(spec: ScalingSpec, rotary_dim: int, base: float, scale: float):
    """NTK-by-parts: ramped mix of θ_d and θ_d/s; attention 1."""
    return by_parts_inv_freq(spec, rotary_dim, base, scale), 1.0


def rope_native(spec: ScalingSpec, rotary_dim: int, base: float, scale: float):
    """The model's own RoPE: no formula here; `scaling.apply_scaling` keeps the rotary modules the
    model was loaded with (whatever its `rope_parameters` say)."""
    raise MethodError("native has no frequency formula in evalharness: it is the RoPE the model ships "
                      "with; give a model and use it as --method native.")


def rope_yarn(spec: ScalingSpec, rotary_dim: int, base: float, scale: float):
    """YaRN: NTK-by-parts frequencies, cos and sin multiplied by 0.1·ln(s)+1 (or the override)."""
    attention = spec.attention_factor if spec.attention_factor is not None else yarn_mscale(scale)
    return by_parts_inv_freq(spec, rotary_dim, base, scale), float(attention)


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its frequency function and its torch-free facts (`method_facts`)."""

    function: FrequencyFn
    facts: MethodFacts

    @property
    def dynamic(self) -> bool:
        return self.facts.dynamic

    @property
    def needs_ramp(self) -> bool:
        return self.facts.needs_ramp

    @property
    def has_attention(self) -> bool:
        return self.facts.has_attention

    @property
    def description(self) -> str:
        return self.facts.description

    @property
    def uses_factor(self) -> bool:
        return self.facts.uses_factor

    def reads(self, field: str) -> bool:
        if self.function is rope_native:
            return False
        if field in ("beta_fast", "beta_slow", "truncate"):
            return self.needs_ramp
        if field == "attention_factor":
            return self.has_attention
        if field == "layers":
            return self.function is not rope_base
        return True


_FUNCTIONS: dict[str, FrequencyFn] = {
    "base": rope_base,
    "pi": rope_pi,
    "ntk": rope_ntk,
    "ntk-by-parts": rope_ntk_by_parts,
    "yarn": rope_yarn,
    "dynamic-pi": rope_pi,
    "dynamic-ntk": rope_ntk,
    "dynamic-yarn": rope_yarn,
    "native": rope_native,
}
METHODS: dict[str, MethodEntry] = {name: MethodEntry(_FUNCTIONS[name], facts)
                                   for name, facts in METHOD_FACTS.items()}


def method_names() -> list[str]:
    return list(METHODS)


def canonical_method(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise MethodError(
            f"unknown method {name!r}; valid methods: {', '.join(METHODS)} (aliases: {', '.join(ALIASES)})."
        )
    return key


def rope_frequencies(spec: ScalingSpec, rotary_dim: int, base: float,
                     seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim//2] float32, attention_scale) for `spec` on a RoPE of dimension
    `rotary_dim` and base `base`. `seq_len` is read only by dynamic methods (s = max(1, seq_len/L));
    a dynamic method without seq_len gives the unscaled frequencies (s = 1)."""
    check_dims(rotary_dim, base)
    if METHODS[spec.method].needs_ramp and spec.original_ctx is None:
        raise MethodError(f"{spec}: needs original_ctx (the model's pre-trained context).")
    scale = spec.scale_at(seq_len)
    inv_freq, attention = METHODS[spec.method].function(spec, rotary_dim, base, scale)
    return inv_freq, float(attention)


def describe(spec: ScalingSpec, rotary_dim: int, base: float, seq_len: int | None = None,
             frequencies: tuple[torch.Tensor, float] | None = None) -> dict:
    """A one-row summary of the frequency table, for the `methods` CLI and notebooks;
    `frequencies` (inv_freq, attention scale) given: those (a model's shipped `native` RoPE)
    instead of the spec's formula."""
    inv_freq, attention = frequencies if frequencies is not None else rope_frequencies(spec, rotary_dim, base, seq_len)
    theta = base_inv_freq(rotary_dim, base)
    row = {
        "spec": str(spec),
        "scale": spec.scale_at(seq_len),
        "original_ctx": spec.original_ctx,
        "seq_len": seq_len,
        "inv_freq_first": float(inv_freq[0]),
        "inv_freq_last": float(inv_freq[-1]),
        "max_wavelength": float(2 * math.pi / inv_freq[-1]),
        "pairs_interpolated": int(torch.isclose(inv_freq, theta / max(spec.scale_at(seq_len), 1.0)).sum())
        if spec.scale_at(seq_len) > 1 else 0,
        "ramp_low": None,
        "ramp_high": None,
        "attention_scale": attention,
    }
    if METHODS[spec.method].needs_ramp and spec.original_ctx is not None:
        row["ramp_low"], row["ramp_high"] = ramp_bounds(spec, rotary_dim, base)
    return row
