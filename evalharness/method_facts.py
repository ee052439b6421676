"""The method registry's facts, importable without torch.

One entry per RoPE scaling method: its canonical name, display label, whether it reads the scale
factor s, whether it is dynamic (s = max(1, l/L) from the current length), which options it reads,
and the aliases the CLI accepts. `methods.py` pairs each entry with its frequency function;
the analysis, figure and report modules read the facts from here, so nothing copies them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodFacts:
    """What a method is, without its math.

    Attributes:
        display: the label figures and reports show (`YaRN`, `Dynamic-NTK`).
        dynamic: the scale is computed from the sequence length, s = max(1, l/L).
        uses_factor: the method reads the factor s (static methods other than base); the others
            carry factor 1 in result rows.
        needs_ramp: reads beta_fast / beta_slow / truncate (the NTK-by-parts ramp).
        has_attention: multiplies cos and sin by an attention factor (YaRN's √(1/t)).
        description: one line for listings.
    """

    display: str
    dynamic: bool
    uses_factor: bool
    needs_ramp: bool = False
    has_attention: bool = False
    description: str = ""


# Insertion order is the order tables and figures list methods in.
METHOD_FACTS: dict[str, MethodFacts] = {
    "base": MethodFacts("Base", dynamic=False, uses_factor=False, description="unmodified RoPE"),
    "pi": MethodFacts("PI", dynamic=False, uses_factor=True, description="Position Interpolation: θ/s"),
    "ntk": MethodFacts("NTK", dynamic=False, uses_factor=True,
                       description="NTK-aware: base b·s^(|D|/(|D|-2))"),
    "ntk-by-parts": MethodFacts("NTK-by-parts", dynamic=False, uses_factor=True, needs_ramp=True,
                                description="NTK-by-parts: ramp between θ and θ/s"),
    "yarn": MethodFacts("YaRN", dynamic=False, uses_factor=True, needs_ramp=True, has_attention=True,
                        description="YaRN: NTK-by-parts + attention 0.1·ln(s)+1"),
    "dynamic-pi": MethodFacts("Dynamic-PI", dynamic=True, uses_factor=False,
                              description="PI with s = max(1, l/L)"),
    "dynamic-ntk": MethodFacts("Dynamic-NTK", dynamic=True, uses_factor=False,
                               description="NTK-aware with s = max(1, l/L)"),
    "dynamic-yarn": MethodFacts("Dynamic-YaRN", dynamic=True, uses_factor=False, needs_ramp=True,
                                has_attention=True, description="YaRN with s = max(1, l/L)"),
    # The model's shipped RoPE: dynamic or not and its factor depend on what it ships
    # (`native_type_is_dynamic`, `native_display`), not on the registry.
    "native": MethodFacts("native", dynamic=False, uses_factor=False,
                          description="the RoPE the model ships with (its rope_parameters), untouched"),
}
# Method options that read better in words than as `key=value` in a series label (figures, reports).
OPTION_WORDS = {("layers", "all"): "local layers too"}

ALIASES = {"linear": "pi", "dynamic-linear": "dynamic-pi", "ntk-aware": "ntk", "dynamic": "dynamic-ntk",
           "by-parts": "ntk-by-parts", "none": "base", "default": "base"}


def yarn_mscale(scale: float) -> float:
    """YaRN's cos/sin multiplier √(1/t) = 0.1·ln(s) + 1 (paper eq. 22); 1 for s ≤ 1."""
    return 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0


# transformers rope_types whose frequencies depend on the current length: "dynamic" (NTK) and its
# relatives recompute them as the sequence grows; "longrope" switches factor sets past L.
_LENGTH_DEPENDENT_TYPES = ("longrope",)


def native_type_is_dynamic(rope_type: str) -> bool:
    """Whether a shipped transformers rope_type computes its frequencies from the current length."""
    return "dynamic" in rope_type or rope_type in _LENGTH_DEPENDENT_TYPES


def native_display(rope_type: str | None, factor: float) -> str:
    """`native (yarn s=16)`, `native (dynamic s=2)`, `native (default)`, `native` (unresolved)."""
    if rope_type is None:
        return "native"
    if rope_type == "default" or not factor or float(factor) == 1.0:
        return f"native ({rope_type})"
    factor = float(factor)
    return f"native ({rope_type} s={int(factor) if factor.is_integer() else factor})"
