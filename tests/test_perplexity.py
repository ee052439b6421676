"""The perplexity engine against independent slow computations (transformers' own loss)."""
import math

import pytest
import torch
import transformers

from evalharness.methods import ScalingSpec
from evalharness.perplexity import (
    NonFiniteError,
    WindowScore,
    combine,
    passes_for_lengths,
    sliding_scores,
    sliding_windows,
    token_nll,
    truncated_curve,
    truncated_nll,
    with_bos,
)
from evalharness.scaling import apply_scaling

L = 64
BOS = 1


def tiny_llama(seed=0, **overrides):
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=L,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **overrides,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def doc():
    return torch.randint(2, 97, (300,), generator=torch.Generator().manual_seed(3))


def reference_nll_sum(model, window_ids, first_scored):
    """Slow path: transformers computes the loss from full logits with labels (−100 = unscored)."""
    ids = window_ids[None]
    labels = ids.clone()
    labels[:, :first_scored] = -100
    with torch.inference_mode():
        loss = model(ids, labels=labels, use_cache=False).loss
    return loss.item() * (ids.shape[1] - first_scored)


@pytest.mark.parametrize("spec", ["base", "yarn:4", "dynamic-yarn"])
def test_truncated_matches_transformers_loss(spec, doc):
    model = tiny_llama()
    apply_scaling(model, spec)
    for length in (32, L, 200):
        nll = truncated_nll(model, doc, length, BOS)
        assert nll.shape == (length - 1,)
        window = with_bos(doc, BOS)[:length]
        assert nll.double().sum().item() == pytest.approx(reference_nll_sum(model, window, 1), rel=1e-5)


def test_sliding_matches_transformers_loss_per_window(doc):
    model = tiny_llama()
    apply_scaling(model, "yarn:2")
    window, stride = 128, 48  # stride smaller than the window
    scores = sliding_scores(model, doc, window, stride, BOS)
    sequence = with_bos(doc, BOS)
    windows = sliding_windows(sequence.shape[0], window, stride)
    assert len(scores) == len(windows) > 3
    for w, score in zip(windows, scores):
        expected = reference_nll_sum(model, sequence[w.begin:w.end], w.first_scored - w.begin)
        assert score.nll_sum == pytest.approx(expected, rel=1e-5)
    assert sum(s.scored_tokens for s in scores) == sequence.shape[0] - 1  # every token once


def test_sliding_windows_worked_by_hand():
    # 10 tokens, window 4, stride 3: [0,4) scores 1..3; [3,7) scores 4..6; [6,10) scores 7..9
    assert [(w.begin, w.end, w.first_scored) for w in sliding_windows(10, 4, 3)] == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    # stride 2: [0,4) 1..3; [2,6) 4..5; [4,8) 6..7; [6,10) 8..9
    assert [(w.begin, w.end, w.first_scored) for w in sliding_windows(10, 4, 2)] == [
        (0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    # a document shorter than the window is one window
    assert [(w.begin, w.end, w.first_scored) for w in sliding_windows(3, 8, 2)] == [(0, 3, 1)]
    with pytest.raises(ValueError, match="stride 5 is larger than the window 4"):
        sliding_windows(10, 4, 5)


@pytest.mark.parametrize("spec", ["base", "pi:4", "ntk:4", "ntk-by-parts:4", "yarn:4"])
def test_one_pass_equals_per_length_passes_for_static_methods(spec, doc):
    model = tiny_llama()
    apply_scaling(model, spec)
    lengths = [16, 64, 100, 160, 256]
    one_pass = truncated_curve(truncated_nll(model, doc, max(lengths), BOS), lengths)
    for length in lengths:
        separate = truncated_nll(model, doc, length, BOS).double().sum().item()
        assert one_pass[length].nll_sum == pytest.approx(separate, rel=1e-5)
        assert one_pass[length].scored_tokens == length - 1


@pytest.mark.parametrize("spec", ["dynamic-pi", "dynamic-ntk", "dynamic-yarn"])
def test_dynamic_differs_from_base_beyond_L_only(spec, doc):
    model = tiny_llama()
    apply_scaling(model, "base")
    base = truncated_nll(model, doc, 256, BOS)
    apply_scaling(model, spec)
    for length in (32, L):
        expected = base[: length - 1].sum().item()
        assert truncated_nll(model, doc, length, BOS).sum().item() == pytest.approx(expected, rel=1e-6)
    beyond = truncated_nll(model, doc, 256, BOS)
    assert (beyond[L:] - base[L:]).abs().max().item() > 1e-3  # a random model barely reads positions
    # a dynamic method's one pass at 256 is NOT the curve at 128: the scale depends on the length
    at_128 = truncated_nll(model, doc, 128, BOS)
    assert (beyond[L:127] - at_128[L:]).abs().max().item() > 1e-3


def test_passes_for_lengths():
    assert passes_for_lengths([2, 4, 6, 8], dynamic=False, original_ctx=4) == [(8, [2, 4, 6, 8])]
    assert passes_for_lengths([2, 4, 6, 8], dynamic=True, original_ctx=4) == [(4, [2, 4]), (6, [6]), (8, [8])]
    assert passes_for_lengths([6, 8], dynamic=True, original_ctx=4) == [(6, [6]), (8, [8])]


def test_head_chunking_does_not_change_numbers(doc):
    model = tiny_llama()
    ids = with_bos(doc, BOS)[:200]
    whole = token_nll(model, ids, 1, chunk_size=10_000)
    for chunk in (1, 7, 64):
        assert torch.allclose(token_nll(model, ids, 1, chunk_size=chunk), whole, rtol=1e-6, atol=1e-6)


def test_final_logit_softcap_is_applied(doc):
    config = transformers.Gemma2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       max_position_embeddings=L, final_logit_softcapping=2.0, sliding_window=32)
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # make logits large enough that the cap matters
        model.lm_head.weight.mul_(50)
    ids = with_bos(doc, BOS)[:100]
    ours = token_nll(model, ids, 1).double().sum().item()
    assert ours == pytest.approx(reference_nll_sum(model, ids, 1), rel=1e-5)
    model.config.final_logit_softcapping = None
    assert abs(token_nll(model, ids, 1).double().sum().item() - ours) > 1.0  # the cap changed the numbers


def test_nan_is_an_error_not_a_number(doc):
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        token_nll(model, with_bos(doc, BOS)[:50], 1)


def test_combine_token_weighted_and_window_mean():
    scores = [WindowScore(3, 3.0), WindowScore(1, 2.0)]
    total, window_mean = combine(scores)
    assert total.scored_tokens == 4 and total.ppl == pytest.approx(math.exp(5 / 4))
    assert window_mean == pytest.approx(math.exp((1.0 + 2.0) / 2))


def test_bf16_runs_and_is_close_to_fp32(doc):
    model = tiny_llama()
    ids = with_bos(doc, BOS)[:128]
    fp32 = token_nll(model, ids, 1).sum().item()
    bf16 = token_nll(model.to(torch.bfloat16), ids, 1)
    assert bf16.dtype == torch.float32  # accumulation in fp32
    assert bf16.sum().item() == pytest.approx(fp32, rel=2e-2)


def test_scaling_spec_label_is_the_method_column():
    assert ScalingSpec("yarn", 2, original_ctx=64).label == "yarn"
    assert ScalingSpec("yarn", 2, attention_factor=1.2).label == "yarn:attention_factor=1.2"


def test_attention_takes_the_causal_path_without_a_mask_tensor(doc, monkeypatch):
    """SDPA with an explicit mask is wrong past 65,536 tokens in some torch versions and costs T² memory."""
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask") is None, kwargs.get("is_causal")))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=L, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval()
    token_nll(model, with_bos(doc, BOS)[:200], 1)
    assert calls == [(True, True), (True, True)]  # one call per layer, no mask, causal flag
