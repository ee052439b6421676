"""methods.py against values worked by hand from the YaRN paper's formulas (arXiv 2309.00071)."""
import math

import pytest
import torch

from evalharness.method_facts import METHOD_FACTS
from evalharness.methods import (
    METHODS,
    MethodError,
    ScalingSpec,
    describe,
    ramp_bounds,
    rope_frequencies,
    yarn_mscale,
)

LLAMA2 = dict(rotary_dim=128, base=10000.0)


def theta(d, dim=128, base=10000.0):
    return base ** (-2 * d / dim)


def test_base_frequencies_are_the_rope_formula():
    inv_freq, attention = rope_frequencies(ScalingSpec("base"), **LLAMA2)
    assert inv_freq.shape == (64,) and inv_freq.dtype == torch.float32
    assert attention == 1.0
    for d in (0, 1, 17, 63):
        assert inv_freq[d].item() == pytest.approx(theta(d), rel=1e-7)


@pytest.mark.parametrize(
    "original_ctx, low, high", [(4096, 20, 46), (2048, 16, 41)]  # Llama-2, LLaMA-1 (the paper's worked bounds)
)
def test_ramp_bounds_llama(original_ctx, low, high):
    spec = ScalingSpec("yarn", 16, original_ctx=original_ctx)
    assert ramp_bounds(spec, **LLAMA2) == (low, high)


def test_fractional_ramp_bounds_when_not_truncated():
    # dim_for(n) = 128 ln(4096 / (2π n)) / (2 ln 1e4): n=32 → 20.944, n=1 → 45.027 (by hand)
    spec = ScalingSpec("yarn", 16, original_ctx=4096, truncate=False)
    low, high = ramp_bounds(spec, **LLAMA2)
    assert low == pytest.approx(20.944, abs=1e-3)
    assert high == pytest.approx(45.027, abs=1e-3)


@pytest.mark.parametrize("s, mscale", [(2, 1.0693), (8, 1.2079), (16, 1.2773), (32, 1.3466), (1, 1.0)])
def test_yarn_attention_scale(s, mscale):
    assert yarn_mscale(s) == pytest.approx(mscale, abs=5e-5)
    if s > 1:
        _, attention = rope_frequencies(ScalingSpec("yarn", s, original_ctx=4096), **LLAMA2)
        assert attention == pytest.approx(mscale, abs=5e-5)


def test_yarn_attention_override_and_ntk_by_parts_has_none():
    _, attention = rope_frequencies(ScalingSpec("yarn", 16, original_ctx=4096, attention_factor=1.5), **LLAMA2)
    assert attention == 1.5
    _, attention = rope_frequencies(ScalingSpec("ntk-by-parts", 16, original_ctx=4096), **LLAMA2)
    assert attention == 1.0


def test_pi_divides_every_frequency():
    inv_freq, attention = rope_frequencies(ScalingSpec("pi", 4), **LLAMA2)
    assert attention == 1.0
    for d in (0, 30, 63):
        assert inv_freq[d].item() == pytest.approx(theta(d) / 4, rel=1e-7)


def test_ntk_aware_base_worked_by_hand():
    # b' = 1e4 · 4^(128/126): ln 4 · 128/126 = 1.408298, e^1.4 · e^0.008298 = 4.0552 · 1.008333 → b' ≈ 40890
    inv_freq, _ = rope_frequencies(ScalingSpec("ntk", 4), **LLAMA2)
    assert inv_freq[0].item() == 1.0  # the highest frequency is untouched
    new_base = 40890.0
    assert inv_freq[63].item() == pytest.approx(new_base ** (-126 / 128), rel=2e-5)
    # the lowest frequency is exactly θ/s: b'^(-126/128) = b^(-126/128) / s
    assert inv_freq[63].item() == pytest.approx(theta(63) / 4, rel=1e-6)


@pytest.mark.parametrize("method", ["ntk-by-parts", "yarn"])
def test_by_parts_regions(method):
    s = 16
    inv_freq, _ = rope_frequencies(ScalingSpec(method, s, original_ctx=4096), **LLAMA2)
    for d in range(0, 21):  # below low=20: extrapolated, θ kept
        assert inv_freq[d].item() == pytest.approx(theta(d), rel=1e-6)
    for d in range(46, 64):  # above high=46: interpolated, θ/s
        assert inv_freq[d].item() == pytest.approx(theta(d) / s, rel=1e-6)
    # d = 33 is half-way up the ramp: γ = (33-20)/(46-20) = 0.5
    assert inv_freq[33].item() == pytest.approx(0.5 * theta(33) + 0.5 * theta(33) / s, rel=1e-6)


def test_dynamic_methods_use_length_over_original_context():
    L = 4096
    for dynamic, static in [("dynamic-pi", "pi"), ("dynamic-ntk", "ntk"), ("dynamic-yarn", "yarn")]:
        spec = ScalingSpec(dynamic, original_ctx=L)
        base_freq, _ = rope_frequencies(ScalingSpec("base"), **LLAMA2)
        for seq_len in (1, 100, L):  # never s < 1: at or below L they are base exactly
            inv_freq, attention = rope_frequencies(spec, seq_len=seq_len, **LLAMA2)
            assert torch.equal(inv_freq, base_freq) and attention == 1.0
        inv_freq, attention = rope_frequencies(spec, seq_len=3 * L, **LLAMA2)
        ref_freq, ref_attention = rope_frequencies(ScalingSpec(static, 3, original_ctx=L), **LLAMA2)
        assert torch.allclose(inv_freq, ref_freq, rtol=1e-7, atol=0)
        assert attention == pytest.approx(ref_attention)


def test_partial_rotary_dimension():
    # GPT-NeoX style: head_dim 64 × 0.25 → |D| = 16
    inv_freq, _ = rope_frequencies(ScalingSpec("yarn", 4, original_ctx=2048), rotary_dim=16, base=10000.0)
    assert inv_freq.shape == (8,)
    low, high = ramp_bounds(ScalingSpec("yarn", 4, original_ctx=2048), 16, 10000.0)
    # dim_for(32) = 16 ln(2048/(64π)) / (2 ln 1e4) = 16·2.321/18.42 = 2.016 → 2; dim_for(1) = 16·5.787/18.42 = 5.026 → 6
    assert (low, high) == (2, 6)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yarn:16", ScalingSpec("yarn", 16)),
        ("linear:4", ScalingSpec("pi", 4)),
        ("YaRN:2:original_ctx=4096:truncate=false", ScalingSpec("yarn", 2, original_ctx=4096, truncate=False)),
        ("yarn:8:attention_factor=1.1:beta_fast=16", ScalingSpec("yarn", 8, attention_factor=1.1, beta_fast=16)),
        ("base", ScalingSpec("base")),
        ("dynamic-yarn", ScalingSpec("dynamic-yarn")),
    ],
)
def test_parse_and_round_trip(text, expected):
    spec = ScalingSpec.parse(text)
    assert spec == expected
    assert ScalingSpec.parse(str(spec)) == spec


def test_str_is_readable():
    assert str(ScalingSpec("yarn", 16)) == "yarn:16"
    assert str(ScalingSpec("linear", 2.5)) == "pi:2.5"
    assert str(ScalingSpec("base", 4)) == "base"  # base ignores the factor
    assert str(ScalingSpec("yarn", 2, attention_factor=1.1)) == "yarn:2:attention_factor=1.1"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("rope-magic:2", "unknown method 'rope-magic'"),
        ("yarn:0", "factor 0.0 is not valid"),
        ("yarn:-2", "must be a number > 0"),
        ("yarn:abc", "factor 'abc'"),
        ("pi:0.5", "< 1"),
        ("yarn:2:original_ctx=-5", "original context -5"),
        ("yarn:2:color=red", "cannot read 'color=red'"),
        ("yarn:2:truncate=maybe", "true or false"),
    ],
)
def test_bad_specs_say_what_is_wrong(text, fragment):
    with pytest.raises(MethodError, match=fragment.replace("(", r"\(")):
        ScalingSpec.parse(text)


def test_registry_has_every_method_of_the_paper():
    assert set(METHODS) == {"base", "pi", "ntk", "ntk-by-parts", "yarn", "dynamic-pi", "dynamic-ntk", "dynamic-yarn",
                            "native"}  # native: the model's shipped RoPE, no formula of its own


def test_describe_summarises_the_table():
    row = describe(ScalingSpec("yarn", 16, original_ctx=4096), **LLAMA2)
    assert (row["ramp_low"], row["ramp_high"]) == (20, 46)
    assert row["attention_scale"] == pytest.approx(1.2773, abs=5e-5)
    assert row["inv_freq_first"] == 1.0
    assert row["pairs_interpolated"] == 64 - 46
    assert row["max_wavelength"] == pytest.approx(2 * math.pi / (theta(63) / 16), rel=1e-5)


# ---- The tables layer: summaries and statistics against direct computations on hand-made tables.


def test_registry_facts_agree_with_the_methods_that_use_them():
    from evalharness.methods import METHODS, ScalingSpec

    assert list(METHODS) == list(METHOD_FACTS)
    for name, facts in METHOD_FACTS.items():
        entry = METHODS[name]
        assert entry.facts is facts
        # a method that reads the factor keeps it; the others are normalised to 1 in result rows
        assert (ScalingSpec(name, factor=2.0, original_ctx=64).factor == 2.0) == facts.uses_factor
        assert ScalingSpec(name, factor=2.0, original_ctx=64).is_dynamic == facts.dynamic
    # the attention factor of the math is the facts' formula
    from evalharness.methods import rope_frequencies

    _, attention = rope_frequencies(ScalingSpec("yarn", 4.0, original_ctx=64), 8, 10000.0)
    assert attention == pytest.approx(yarn_mscale(4.0)) == pytest.approx(0.1 * math.log(4) + 1)
