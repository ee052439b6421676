"""Per-layer RoPE (`ScalingSpec.layers`): on a model with RoPE per layer type (Gemma 3: sliding
layers base 1e4, global layers base 1e6) a method scales the global layers only by default and
every layer with `layers=all`; checked on the rotary module's frequencies and against
transformers' own per-layer-type scaled rotary."""
import copy

import pytest
import torch
import transformers
from conftest import tiny_llama

from evalharness.methods import MethodError, ScalingSpec, base_inv_freq, rope_frequencies
from evalharness.scaling import ScalingError, apply_scaling, layer_rope_bases, rope_note, rotary_modules

L = 64
FULL, SLIDING = "full_attention", "sliding_attention"


def gemma3_config(rope_parameters=None):
    return transformers.Gemma3TextConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=L, sliding_window=8,
        layer_types=[SLIDING, SLIDING, FULL, SLIDING],
        rope_parameters=rope_parameters or {FULL: {"rope_type": "default", "rope_theta": 1e6},
                                            SLIDING: {"rope_type": "default", "rope_theta": 1e4}})


def gemma3(config=None):
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config or gemma3_config()).eval()
    with torch.no_grad():  # peaked attention, so the rotation shows in the logits
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (1, 3 * L), generator=torch.Generator().manual_seed(0))


def frequencies(model, layer_type):
    (module,) = [m for _, _, m in rotary_modules(model)]
    return module.frequencies(0, layer_type)


def test_default_scales_global_layers_only():
    model = gemma3()
    spec = apply_scaling(model, "yarn:4")
    assert spec.layers == "global"
    inv_freq, attention = frequencies(model, SLIDING)
    assert torch.equal(inv_freq, base_inv_freq(16, 1e4)) and attention == 1.0
    inv_freq, attention = frequencies(model, FULL)
    expected, expected_attention = rope_frequencies(spec, 16, 1e6)
    assert torch.equal(inv_freq, expected) and attention == expected_attention
    assert not torch.equal(inv_freq, base_inv_freq(16, 1e6))


def test_layers_all_scales_the_sliding_layers_too_and_leaves_global_as_is():
    model = gemma3()
    apply_scaling(model, "yarn:4")
    global_only = frequencies(model, FULL)
    spec = apply_scaling(model, "yarn:4:layers=all")
    inv_freq, attention = frequencies(model, SLIDING)
    expected, expected_attention = rope_frequencies(spec, 16, 1e4)  # the sliding layers' own base
    assert torch.equal(inv_freq, expected) and attention == expected_attention
    assert not torch.equal(inv_freq, base_inv_freq(16, 1e4))
    full = frequencies(model, FULL)
    assert torch.equal(full[0], global_only[0]) and full[1] == global_only[1]


@pytest.mark.parametrize("layers, scaled_types", [("global", (FULL,)), ("all", (FULL, SLIDING))])
def test_equals_transformers_per_layer_type_yarn(ids, layers, scaled_types):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    params = {FULL: {"rope_type": "default", "rope_theta": 1e6}, SLIDING: {"rope_type": "default", "rope_theta": 1e4}}
    for layer_type in scaled_types:
        params[layer_type] = {**params[layer_type], **yarn}
    model = gemma3()
    twin = gemma3(gemma3_config(copy.deepcopy(params)))
    twin.load_state_dict(model.state_dict())
    apply_scaling(model, f"yarn:4:layers={layers}")
    with torch.no_grad():
        ours, theirs = model(ids).logits, twin(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        apply_scaling(model, "base")
        assert (model(ids).logits - theirs).abs().max() > 1e-3  # the scaling is visible


def test_spec_text_and_label():
    spec = ScalingSpec.parse("yarn:2:layers=all")
    assert spec.layers == "all" and str(spec) == "yarn:2:layers=all" and spec.label == "yarn:layers=all"
    assert str(ScalingSpec.parse("yarn:2:layers=global")) == "yarn:2"  # the default is not written
    assert ScalingSpec.parse("dynamic-yarn:layers=all").short == "dynamic-yarn:layers=all"


@pytest.mark.parametrize("text, message", [("yarn:2:layers=some", "layers 'some' in spec 'yarn:2:layers=some' must be "
                                                                   "global or all"),
                                           ("base:layers=all", "layers=all does not apply to base")])
def test_bad_layers_option(text, message):
    with pytest.raises(MethodError, match=message):
        ScalingSpec.parse(text)


def test_layers_all_refused_on_a_single_rope_model():
    model = tiny_llama()
    with pytest.raises(ScalingError, match="layers=all needs a model with RoPE per layer type.*llama has one RoPE"):
        apply_scaling(model, "yarn:2:layers=all")


def test_rope_bases_are_reported():
    model = gemma3()
    assert layer_rope_bases(model.config) == {FULL: 1e6, SLIDING: 1e4}
    note = rope_note(model)
    assert note["layer_rope_theta"] == {FULL: 1e6, SLIDING: 1e4}
    assert "sliding_attention 10000" in note["base"] and "full_attention 1e+06" in note["base"]
    assert layer_rope_bases(tiny_llama().config) == {}
