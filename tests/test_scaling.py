"""scaling.py against transformers' own RoPE implementations on tiny random models."""
import copy
import json

import pandas as pd
import pytest
import torch
import transformers
from conftest import tiny_llama, write_corpus
from model_folders import TINY, WORDS, run, save_folder, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

from evalharness import cli, models, scaling
from evalharness.analysis.display import method_display
from evalharness.cli.common import build_specs
from evalharness.methods import MethodError, ScalingSpec, base_inv_freq, native_display, rope_frequencies
from evalharness.scaling import (
    ScaledRotaryEmbedding,
    ScalingError,
    apply_scaling,
    current_spec,
    export_rope_parameters,
    layer_rope_bases,
    requires_max_position_embeddings,
    restore_original,
    rope_note,
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


# ----
# `--method native` (the RoPE a model ships with), L from original_max_position_embeddings,
# `--allow-pickle-weights` and `--sliding-window-attention`, on tiny local model folders built here.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 2, WORDS, lambda i: 60 + 10 * i)


def doc_ids(folder, corpus, n):
    from evalharness import corpora

    tokenizer = models.build_byte_tokenizer()
    docs = corpora.load_corpus(f"local:{corpus}", tokenizer, min_tokens=n - 1, n_docs=None)
    return [(d.doc_id, torch.cat([torch.tensor([1]), d.ids])) for d in docs]


def nll_sum(model, ids, length):
    """Σ NLL of tokens 1…length−1 of one window, by transformers' own loss (the obvious way)."""
    with torch.no_grad():
        window = ids[:length].reshape(1, -1)
        return float(model(window, labels=window).loss.double()) * (length - 1)


YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 64}


DYNAMIC_ROPE = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}


@pytest.mark.usefixtures("isolated_cache")
def test_native_yarn_equals_yarn_2_and_differs_from_base(corpus, tmp_path):
    folder = save_folder(tiny_model(max_position_embeddings=128, rope_parameters=dict(YARN_ROPE)), tmp_path / "m")
    out = tmp_path / "run"
    assert run(folder, corpus, out, method="native,yarn,base") == cli.EXIT_OK
    docs = pd.read_csv(out / "perplexity_docs.csv")
    # L defaults to original_max_position_embeddings (64), not max_position_embeddings (128)
    assert set(docs["original_ctx"]) == {64}
    native = docs[docs.method == "native:rope_type=yarn"].set_index(["doc_id", "context_length"])
    yarn = docs[docs.method == "yarn"].set_index(["doc_id", "context_length"])
    base = docs[docs.method == "base"].set_index(["doc_id", "context_length"])
    assert len(native) == 2 * 4 and set(native["factor"]) == {2.0}
    rel = (native["nll_sum"] - yarn["nll_sum"]).abs() / yarn["nll_sum"]
    assert rel.max() < 1e-5
    assert ((native["nll_sum"] - base["nll_sum"]).abs() / base["nll_sum"]).min() > 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    rope = manifest["runs"][-1]["rope"]
    assert rope["shipped"]["rope_type"] == "yarn" and rope["native"] == "native (yarn s=2)"
    assert rope["base"].startswith("plain RoPE") and "not the shipped yarn s=2" in rope["base"]


@pytest.mark.usefixtures("isolated_cache")
def test_native_yarn_matches_transformers_forward(tmp_path):
    """native is the model as loaded: same logits as a fresh load, whatever was applied before."""
    model = tiny_model(max_position_embeddings=128, rope_parameters=dict(YARN_ROPE))
    ids = torch.randint(3, 200, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids).logits
        scaling.apply_scaling(model, "pi:4")
        scaled = model(ids).logits
        resolved = scaling.apply_scaling(model, "native")
        again = model(ids).logits
    assert not torch.allclose(scaled, reference)
    assert torch.equal(again, reference)
    assert (resolved.label, resolved.factor, resolved.original_ctx, resolved.is_dynamic) == (
        "native:rope_type=yarn", 2.0, 64, False)


@pytest.mark.usefixtures("isolated_cache")
def test_native_dynamic_curve_is_per_length(corpus, tmp_path):
    folder = save_folder(tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE)), tmp_path / "d")
    out = tmp_path / "run"
    assert run(folder, corpus, out) == cli.EXIT_OK
    docs = pd.read_csv(out / "perplexity_docs.csv").set_index(["doc_id", "context_length"])
    assert set(docs["method"]) == {"native:rope_type=dynamic"} and set(docs["original_ctx"]) == {64}
    for doc_id, ids in doc_ids(folder, corpus, 128):
        one_pass_model = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            window = ids[:128].reshape(1, -1)
            logits = one_pass_model(window).logits[0, :-1].double()
        one_pass = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none")
        for length in (32, 64, 96, 128):
            fresh = AutoModelForCausalLM.from_pretrained(folder).eval()  # no state from other lengths
            expected = nll_sum(fresh, ids, length)
            got = docs.loc[(doc_id, length), "nll_sum"]
            assert abs(got - expected) / expected < 1e-5, (doc_id, length)
            # a one-pass curve scores every prefix with the frequencies of 128 (s = 2), the
            # per-length curve with those of its own length: they agree only at 128
            curve = float(one_pass[: length - 1].sum())
            if length < 128:
                assert abs(curve - expected) / expected > 1e-4, (doc_id, length)
            else:
                assert abs(curve - expected) / expected < 1e-5


@pytest.mark.usefixtures("isolated_cache")
def test_transformers_dynamic_cache_trap_and_stateless_native():
    """transformers' dynamic RoPE keeps the largest length's frequencies for a shorter sequence
    above L; native clears that state, so 96 after 128 equals 96 on a fresh model."""
    ids = torch.randint(3, 200, (1, 128), generator=torch.Generator().manual_seed(2))
    fresh = tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE))
    with torch.no_grad():
        expected = fresh(ids[:, :96]).logits
        raw = tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE))
        raw(ids)
        stale = raw(ids[:, :96]).logits
        native = tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE))
        resolved = scaling.apply_scaling(native, "native")
        native(ids)
        got = native(ids[:, :96]).logits
    assert resolved.is_dynamic and resolved.original_ctx == 64
    assert not torch.allclose(stale, expected, atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.usefixtures("isolated_cache")
def test_native_on_plain_model_equals_base():
    model = tiny_model(max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    ids = torch.randint(3, 200, (1, 80), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        resolved = scaling.apply_scaling(model, "native")
        native = model(ids).logits
        scaling.apply_scaling(model, "base")
        base = model(ids).logits
    assert resolved.display == "native (default)"
    assert torch.allclose(native, base, atol=1e-5, rtol=0)


@pytest.mark.usefixtures("isolated_cache")
def test_native_labels():
    assert native_display("yarn", 16.0) == "native (yarn s=16)"
    assert native_display("dynamic", 2.0) == "native (dynamic s=2)"
    assert native_display("default", 1.0) == "native (default)"
    assert method_display("native:rope_type=yarn", 16) == "native (yarn s=16)"
    assert method_display("native:rope_type=linear", 8.0) == "native (linear s=8)"
    # native ignores the --factor grid until it is resolved against a model
    specs = build_specs("native,yarn", "2,4", 64)
    assert [str(s) for s in specs] == ["native", "yarn:2:original_ctx=64", "yarn:4:original_ctx=64"]
    assert not ScalingSpec("native").is_dynamic and ScalingSpec("native", native_type="longrope").is_dynamic


@pytest.mark.usefixtures("isolated_cache")
def test_shipped_rope_reads_types():
    def config(rope, max_pos=128):
        return AutoConfig.for_model("llama", **{**TINY, "max_position_embeddings": max_pos, "rope_parameters": rope})

    linear = scaling.shipped_rope(config({"rope_type": "linear", "rope_theta": 1e4, "factor": 8.0}))
    assert (linear.rope_type, linear.factor, linear.original_ctx) == ("linear", 8.0, 128)
    yarn = scaling.shipped_rope(config(dict(YARN_ROPE)))
    assert (yarn.rope_type, yarn.factor, yarn.original_ctx) == ("yarn", 2.0, 64)
    dynamic = scaling.shipped_rope(config(dict(DYNAMIC_ROPE), max_pos=64))
    assert (dynamic.rope_type, dynamic.original_ctx) == ("dynamic", 64)


# ----
# Per-layer RoPE (`ScalingSpec.layers`): on a model with RoPE per layer type (Gemma 3: sliding
# layers base 1e4, global layers base 1e6) a method scales the global layers only by default and
# every layer with `layers=all`; checked on the rotary module's frequencies and against
# transformers' own per-layer-type scaled rotary.


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
def ids_layers():
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
def test_equals_transformers_per_layer_type_yarn(ids_layers, layers, scaled_types):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    params = {FULL: {"rope_type": "default", "rope_theta": 1e6}, SLIDING: {"rope_type": "default", "rope_theta": 1e4}}
    for layer_type in scaled_types:
        params[layer_type] = {**params[layer_type], **yarn}
    model = gemma3()
    twin = gemma3(gemma3_config(copy.deepcopy(params)))
    twin.load_state_dict(model.state_dict())
    apply_scaling(model, f"yarn:4:layers={layers}")
    with torch.no_grad():
        ours, theirs = model(ids_layers).logits, twin(ids_layers).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        apply_scaling(model, "base")
        assert (model(ids_layers).logits - theirs).abs().max() > 1e-3  # the scaling is visible


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
