"""scaling.py against transformers' own RoPE implementations on tiny random models."""
import copy

import pytest
import torch
import transformers
from conftest import tiny_llama

from evalharness.methods import ScalingSpec
from evalharness.scaling import (
    ScaledRotaryEmbedding,
    ScalingError,
    apply_scaling,
    current_spec,
    export_rope_parameters,
    requires_max_position_embeddings,
    restore_original,
    rotary_modules,
)

L = 64  # original context of the tiny models
SEQ = 200  # past L (≈ 3 L)


def logits(model, ids):
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (1, SEQ), generator=torch.Generator().manual_seed(1))


def native_twin(model, rope_parameters, max_position_embeddings=L):
    twin = tiny_llama(rope_parameters=rope_parameters, max_position_embeddings=max_position_embeddings)
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize(
    "spec, native",
    [
        (ScalingSpec("pi", 4), {"rope_type": "linear", "factor": 4.0}),
        (ScalingSpec("yarn", 4), {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}),
        (ScalingSpec("yarn", 8, truncate=False, beta_fast=16),
         {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L, "truncate": False,
          "beta_fast": 16.0}),
        (ScalingSpec("dynamic-ntk"), {"rope_type": "dynamic", "factor": 1.0}),
    ],
    ids=["linear", "yarn", "yarn-fractional", "dynamic-ntk"],
)
def test_matches_transformers_native_rope(spec, native, ids):
    model = tiny_llama()
    reference = logits(native_twin(model, {"rope_theta": 10000.0, **native}), ids)
    assert not torch.allclose(reference, logits(model, ids), atol=1e-3)  # the scaling matters here
    apply_scaling(model, spec)
    assert torch.allclose(logits(model, ids), reference, atol=1e-5, rtol=1e-5)
    # …and the exported rope_parameters dict reproduces it natively too
    exported = export_rope_parameters(current_spec(model), model.config)
    exported_twin = native_twin(model, exported)
    restore_original(model)
    assert torch.allclose(logits(exported_twin, ids), reference, atol=1e-5, rtol=1e-5)


def test_ntk_exports_as_new_rope_theta(ids):
    model = tiny_llama()
    spec = apply_scaling(model, "ntk:4")
    exported = export_rope_parameters(spec, model.config)
    assert exported["rope_type"] == "default"
    assert exported["rope_theta"] == pytest.approx(10000.0 * 4 ** (16 / 14))
    twin = native_twin(model, exported)
    assert torch.allclose(logits(model, ids), logits(twin, ids), atol=1e-5, rtol=1e-5)


def test_export_refuses_methods_transformers_lacks():
    model = tiny_llama()
    for method in ("ntk-by-parts:2", "dynamic-yarn", "dynamic-pi"):
        with pytest.raises(ScalingError, match="no native rope_type"):
            export_rope_parameters(ScalingSpec.parse(method), model.config)
    assert requires_max_position_embeddings(ScalingSpec("dynamic-ntk"))


@pytest.mark.parametrize("method", ["dynamic-pi", "dynamic-ntk", "dynamic-yarn"])
def test_dynamic_is_base_up_to_L_and_differs_beyond(method, ids):
    model = tiny_llama()
    apply_scaling(model, "base")
    short_base, long_base = logits(model, ids[:, :L]), logits(model, ids)
    apply_scaling(model, method)
    assert torch.equal(logits(model, ids[:, :L]), short_base)
    long_dynamic = logits(model, ids)
    assert not torch.allclose(long_dynamic, long_base, atol=1e-3)
    # the scale is recomputed per forward: a shorter call after a long one is base again
    assert torch.equal(logits(model, ids[:, : L // 2]), short_base[:, : L // 2])


def test_reapply_without_reload_and_base_matches_shipped(ids):
    model = tiny_llama()
    shipped = logits(model, ids)
    apply_scaling(model, "yarn:4")
    yarn = logits(model, ids)
    apply_scaling(model, "pi:2")
    assert len(rotary_modules(model)) == 1  # replaced, not stacked
    apply_scaling(model, "yarn:4")
    assert torch.equal(logits(model, ids), yarn)
    apply_scaling(model, "base")
    assert torch.allclose(logits(model, ids), shipped, atol=1e-5)
    restore_original(model)
    assert torch.equal(logits(model, ids), shipped)


def test_original_context_is_not_max_position_embeddings(ids):
    model = tiny_llama()
    spec = apply_scaling(model, "dynamic-yarn")
    assert spec.original_ctx == L
    model.config.max_position_embeddings = 4 * L  # e.g. raised for a long-context tool
    assert apply_scaling(model, "dynamic-yarn").original_ctx == L  # still the pre-trained context
    assert model.config.max_position_embeddings == 4 * L  # and we do not touch the config
    explicit = apply_scaling(model, ScalingSpec("yarn", 2, original_ctx=32))
    assert explicit.original_ctx == 32 and model.config.max_position_embeddings == 4 * L


def tiny_config(cls, **extra):
    return cls(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=L, **extra)


@pytest.mark.parametrize(
    "config_factory",
    [
        lambda: tiny_config(transformers.MistralConfig, sliding_window=None),
        lambda: tiny_config(transformers.Qwen2Config),
        lambda: tiny_config(transformers.GemmaConfig, head_dim=16),
        lambda: tiny_config(transformers.Gemma2Config, head_dim=16, sliding_window=32),
    ],
    ids=["mistral", "qwen2", "gemma", "gemma2"],
)
def test_other_architectures_match_native_yarn(config_factory, ids):
    config = config_factory()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    native_config = copy.deepcopy(config)
    native_config.rope_parameters = {**config.rope_parameters, "rope_type": "yarn", "factor": 4.0,
                                     "original_max_position_embeddings": L}
    twin = transformers.AutoModelForCausalLM.from_config(native_config).eval()
    twin.load_state_dict(model.state_dict())
    apply_scaling(model, "yarn:4")
    assert torch.allclose(logits(model, ids), logits(twin, ids), atol=1e-5, rtol=1e-5)


def test_gpt_neox_partial_rotary(ids):
    config = transformers.GPTNeoXConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=L, rotary_pct=0.25)
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config).eval()
    native_config = copy.deepcopy(config)
    native_config.rope_parameters = {**config.rope_parameters, "rope_type": "linear", "factor": 4.0}
    twin = transformers.GPTNeoXForCausalLM(native_config).eval()
    twin.load_state_dict(model.state_dict())
    apply_scaling(model, "pi:4")
    (module,) = [m for _, _, m in rotary_modules(model)]
    assert module.geometry[None][0] == 4  # head_dim 16 × 0.25
    assert torch.allclose(logits(model, ids), logits(twin, ids), atol=1e-5, rtol=1e-5)


def test_model_without_rope_gets_a_clear_error():
    config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(ScalingError, match="GPT2LMHeadModel has no rotary position embedding"):
        apply_scaling(model, "yarn:2")


def test_replacement_module_is_the_scaled_one():
    model = tiny_llama()
    apply_scaling(model, "yarn:2")
    (module,) = [m for _, _, m in rotary_modules(model)]
    assert isinstance(module, ScaledRotaryEmbedding)
    cos, sin = module(torch.zeros(1, dtype=torch.bfloat16), torch.arange(5)[None])
    assert cos.dtype == torch.bfloat16 and cos.shape == (1, 5, 16)
    # position 0: cos = attention scale 0.1 ln 2 + 1, sin = 0
    assert cos[0, 0, 0].item() == pytest.approx(1.0693, abs=1e-2)
    assert sin[0, 0].abs().max().item() == 0
