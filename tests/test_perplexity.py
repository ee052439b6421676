"""The perplexity engine against independent slow computations (transformers' own loss)."""
import math
import random

import pandas as pd
import pytest
import torch
import transformers
from conftest import tiny_llama
from tables_data import doc_row

from evalharness.analysis.display import ordered_groups
from evalharness.corpora import TokenizedDoc
from evalharness.method_facts import yarn_mscale
from evalharness.methods import ScalingSpec
from evalharness.perplexity.analysis import (
    aggregate_perplexity,
    bootstrap_ppl_interval,
    paired_ppl_ratio_interval,
    perplexity_ratios,
    temperature_sweep,
)
from evalharness.perplexity.engine import (
    DocScore,
    NonFiniteError,
    PerplexityTask,
    PositionBuckets,
    WindowScore,
    authors_windows,
    combine,
    document_windows,
    passes_for_lengths,
    run_perplexity,
    sliding_scores,
    sliding_windows,
    token_nll,
    truncated_curve,
    truncated_nll,
    with_bos,
)
from evalharness.results import SCHEMAS, Manifest, ResultStore
from evalharness.scaling import apply_scaling

L = 64
BOS = 1


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


def test_sliding_bos_first_matches_transformers_loss_per_window(doc):
    """`--window-bos first`: the transformers recipe over BOS + document, windows of that sequence."""
    model = tiny_llama()
    apply_scaling(model, "yarn:2")
    window, stride = 128, 48  # stride smaller than the window
    scores = sliding_scores(model, doc, window, stride, BOS, window_bos="first")
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
    total = combine(scores)
    assert total == DocScore(scored_tokens=4, nll_sum=5.0, n_windows=2, window_nll_sum=3.0)
    assert total.ppl == pytest.approx(math.exp(5 / 4))
    assert total.ppl_paper == pytest.approx(math.exp((1.0 + 2.0) / 2))


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
    model = tiny_llama(max_position_embeddings=L, attn_implementation="sdpa")
    token_nll(model, with_bos(doc, BOS)[:200], 1)
    assert calls == [(True, True), (True, True)]  # one call per layer, no mask, causal flag


# ---------------------------------------------------------------------------------------------
# The authors' sliding window (BOS in every window) and their aggregation
# ---------------------------------------------------------------------------------------------

def authors_sliding_ppl(model, docs, window, stride, bos):
    """YaRN `eval/perplexity.py`, re-derived the slow obvious way: per document, windows begin every
    `stride` document tokens; each is BOS + the next window−1 document tokens; its labels are the
    last (end − previous end) tokens (the rest −100), transformers computes the window's mean loss;
    the number is exp(mean over all windows of all documents of those losses)."""
    losses = []
    with torch.inference_mode():
        for doc_ids in docs:
            previous_end = 0
            for begin in range(0, doc_ids.numel(), stride):
                end = min(begin + window - 1, doc_ids.numel())
                target_len = end - previous_end
                ids = torch.cat([torch.tensor([bos]), doc_ids[begin:end]])[None]
                labels = ids.clone()
                labels[:, :-target_len] = -100
                losses.append(model(ids, labels=labels, use_cache=False).loss.double())
                previous_end = end
                if end == doc_ids.numel():
                    break
    return math.exp(torch.stack(losses).mean().item()), len(losses)


def run_grid(model, docs, specs, task, folder):
    store = ResultStore(folder)
    specs = [ScalingSpec.parse(s) for s in specs]
    failed = run_perplexity(model, "tiny", BOS, specs, [TokenizedDoc(str(i), d) for i, d in enumerate(docs)],
                            task, store, Manifest(folder), show_progress=False)
    assert failed == []
    return store


@pytest.fixture(scope="module")
def several_docs():
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(2, 97, (n,), generator=generator) for n in (300, 211, 157)]


@pytest.mark.parametrize("spec", ["base", "yarn:2"])
def test_ppl_paper_equals_the_authors_sliding_algorithm(spec, several_docs, tmp_path):
    model = tiny_llama().double()
    window, stride = 64, 40
    expected, n_windows = authors_sliding_ppl(apply_scaling(model, spec) and model, several_docs, window, stride, BOS)
    assert n_windows > 3 * len(several_docs) - 1  # several windows per document
    task = PerplexityTask("d", "sliding", (window,), stride)  # window_bos defaults to the authors' "every"
    store = run_grid(model, several_docs, [spec], task, tmp_path)
    (row,) = store.read("perplexity").to_dict("records")
    assert row["window_bos"] == "every" and row["n_windows"] == n_windows
    assert row["ppl_paper"] == pytest.approx(expected, rel=1e-6)
    assert row["ppl"] != pytest.approx(expected, rel=1e-4)  # token-weighting is a different number
    docs = store.read("perplexity_docs")
    assert (docs["scored_tokens"] == docs["doc_tokens"]).all()  # every document token once, the first after BOS


def test_bos_placement_changes_later_windows_only(doc):
    model = tiny_llama()
    every = sliding_scores(model, doc, 64, 40, BOS, window_bos="every")
    first = sliding_scores(model, doc, 64, 40, BOS, window_bos="first")
    assert sum(s.scored_tokens for s in every) == sum(s.scored_tokens for s in first) == doc.numel()
    assert every[0].nll_sum == pytest.approx(first[0].nll_sum, rel=1e-6)  # same first window
    assert abs(every[1].nll_sum - first[1].nll_sum) > 1e-3


def test_authors_windows_worked_by_hand():
    # 10 document tokens, window 4 (BOS + 3), stride 2: [0,3) scores 0..2; [2,5) 3..4; [4,7) 5..6; [6,9) 7..8;
    # [8,10) 9 (the last window reaches the end)
    assert [(w.begin, w.end, w.first_scored) for w in authors_windows(10, 4, 2, has_bos=True)] == [
        (0, 3, 0), (2, 5, 3), (4, 7, 5), (6, 9, 7), (8, 10, 9)]
    assert all(w.bos for w in authors_windows(10, 4, 2, has_bos=True))
    assert authors_windows(10, 4, 2, True)[1].first_scored_position == 2  # BOS, doc 2, doc 3 ← scored
    # stride = window − 1: windows tile the document, each scores all of its document tokens
    assert [(w.begin, w.end, w.first_scored) for w in authors_windows(7, 4, 3, True)] == [
        (0, 3, 0), (3, 6, 3), (6, 7, 6)]
    # no BOS: windows of 4 document tokens; the very first token has no context
    assert [(w.begin, w.end, w.first_scored) for w in authors_windows(10, 4, 3, False)] == [
        (0, 4, 1), (3, 7, 4), (6, 10, 7)]
    with pytest.raises(ValueError, match="stride 4 is larger than the 3 document tokens"):
        authors_windows(10, 4, 4, True)


def test_bos_first_windows_are_the_old_sequence_windows():
    """`first` = windows over BOS + document (the previous behaviour), in document coordinates."""
    for n, window, stride in ((10, 4, 3), (10, 4, 2), (3, 8, 2), (100, 16, 5)):
        old = sliding_windows(n + 1, window, stride)
        new = document_windows(n, window, stride, has_bos=True, window_bos="first")
        sequence = with_bos(torch.arange(2, n + 2), BOS)
        for w_old, w_new in zip(old, new, strict=True):
            assert torch.equal(w_new.input_ids(torch.arange(2, n + 2), BOS), sequence[w_old.begin:w_old.end])
            assert w_new.first_scored_position == w_old.first_scored - w_old.begin
    with pytest.raises(ValueError, match="window_bos 'sometimes'"):
        document_windows(10, 4, 2, True, "sometimes")


def test_truncated_ppl_paper_equals_token_weighted_for_equal_lengths(several_docs, tmp_path):
    model = tiny_llama()
    task = PerplexityTask("d", "truncated", (32, 100, 150), 0)
    store = run_grid(model, several_docs, ["base", "yarn:2", "dynamic-ntk"], task, tmp_path)
    table = store.read("perplexity")
    assert len(table) == 9 and (table["window_bos"] == "first").all() and (table["n_windows"] == 3).all()
    assert table["ppl_paper"].tolist() == pytest.approx(table["ppl"].tolist(), rel=1e-9)
    docs = store.read("perplexity_docs")
    # per document: one window, its mean NLL = nll_sum / scored tokens
    assert docs["window_nll_sum"].tolist() == pytest.approx((docs["nll_sum"] / docs["scored_tokens"]).tolist(),
                                                            rel=1e-9)


def test_truncated_nll_sums_are_those_of_the_previous_code(several_docs, tmp_path):
    """The truncated rows keep main's numbers: nll_sum = the float64 sum of the first L−1 token NLLs
    of one BOS + document pass (computed here the way the previous code did, from token_nll)."""
    model = tiny_llama()
    store = run_grid(model, several_docs, ["yarn:2"], PerplexityTask("d", "truncated", (32, 150), 0), tmp_path)
    apply_scaling(model, "yarn:2")
    for row in store.read("perplexity_docs").to_dict("records"):
        doc_ids = several_docs[int(row["doc_id"])]
        nll = token_nll(model, with_bos(doc_ids, BOS)[:150], 1).cpu()
        expected = float(nll[: row["context_length"] - 1].double().sum())
        assert row["nll_sum"] == float(f"{expected:.10g}")  # identical up to the CSV's 10 digits
        assert row["scored_tokens"] == row["context_length"] - 1


# ---------------------------------------------------------------------------------------------
# Loss by position
# ---------------------------------------------------------------------------------------------

def test_position_buckets_by_hand():
    buckets = PositionBuckets(width=4)
    buckets.add(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), first_position=2)  # positions 2..6
    buckets.add(torch.tensor([10.0]), first_position=9)
    assert buckets.rows() == [
        dict(position_start=0, position_end=4, tokens=2, nll_sum=3.0, mean_nll=1.5),
        dict(position_start=4, position_end=8, tokens=3, nll_sum=12.0, mean_nll=4.0),
        dict(position_start=8, position_end=12, tokens=1, nll_sum=10.0, mean_nll=10.0),
    ]
    with pytest.raises(ValueError, match="width 0"):
        PositionBuckets(0)


@pytest.mark.parametrize("protocol, window_bos", [("truncated", "first"), ("sliding", "every"),
                                                  ("sliding", "first")])
def test_positions_sum_back_to_the_document_nll(protocol, window_bos, several_docs, tmp_path):
    model = tiny_llama()
    lengths = (32, 100, 150) if protocol == "truncated" else (48, 64)
    task = PerplexityTask("d", protocol, lengths, 20, window_bos=window_bos, position_bucket=24)
    store = run_grid(model, several_docs, ["base", "dynamic-yarn"], task, tmp_path)
    docs = store.read("perplexity_docs")
    positions = store.read("perplexity_positions_docs")
    cell = ["method", "doc_id", "context_length"]
    per_doc = positions.groupby(cell).agg(bucket_tokens=("tokens", "sum"), bucket_nll=("nll_sum", "sum"),
                                          last=("position_start", "max"))
    joined = docs.set_index(cell).join(per_doc)
    assert len(joined) == len(docs) == 2 * 3 * len(lengths)
    assert (joined["bucket_tokens"] == joined["scored_tokens"]).all()  # every scored token in exactly one bucket
    # the CSV keeps 10 significant digits; the buckets add up in another order than the document sum
    assert joined["bucket_nll"].tolist() == pytest.approx(joined["nll_sum"].tolist(), rel=1e-9)
    assert (joined["last"] < joined.index.get_level_values("context_length")).all()  # positions inside the window
    assert (positions["bucket_width"] == 24).all() and (positions["position_start"] % 24 == 0).all()
    total = store.read("perplexity_positions")
    by_cell = total.groupby(["method", "context_length"])[["tokens", "nll_sum"]].sum()
    agg = store.read("perplexity").set_index(["method", "context_length"])
    assert (by_cell["tokens"] == agg["scored_tokens"]).all()
    doc_totals = docs.groupby(["method", "context_length"])["nll_sum"].sum()
    assert by_cell["nll_sum"].tolist() == pytest.approx(doc_totals.loc[by_cell.index].tolist(), rel=1e-9)
    assert (total["n_docs"] == 3).all()
    assert total["mean_nll"].tolist() == pytest.approx((total["nll_sum"] / total["tokens"]).tolist(), rel=1e-9)


def test_positions_in_memory_sum_exactly_to_float64_rounding(doc):
    model = tiny_llama()
    buckets = PositionBuckets(width=7)
    scores = sliding_scores(model, doc, 64, 24, BOS, positions=buckets)
    rows = buckets.rows()
    assert sum(r["tokens"] for r in rows) == sum(s.scored_tokens for s in scores) == doc.numel()
    assert math.fsum(r["nll_sum"] for r in rows) == pytest.approx(math.fsum(s.nll_sum for s in scores), rel=1e-12)
    assert max(r["position_start"] for r in rows) < 64  # a window holds positions 0..63


def test_bucket_width_defaults_to_an_eighth_of_the_original_context(several_docs, tmp_path):
    model = tiny_llama()  # native context L = 64
    store = run_grid(model, several_docs[:1], ["yarn:2"], PerplexityTask("d", "truncated", (150,), 0), tmp_path)
    positions = store.read("perplexity_positions")
    assert set(positions["bucket_width"]) == {8}
    assert positions["position_start"].tolist() == list(range(0, 150, 8))
    assert positions["tokens"].tolist()[:2] == [7, 8]  # position 0 is BOS, never scored


@pytest.mark.slow
def test_smollm2_ppl_paper_equals_the_authors_algorithm(tmp_path):
    """SmolLM2-135M on a few thousand tokens of a Coq source, window 512, stride 256."""
    from evalharness import corpora, models

    model, tokenizer, info = models.load("smollm2-135m", dtype="float32", device="cpu")
    (document,) = corpora.load_corpus("coq-stdlib", tokenizer, min_tokens=3000, n_docs=1)
    ids = document.ids[:3000]
    expected, n_windows = authors_sliding_ppl(apply_scaling(model, "base") and model, [ids], 512, 256,
                                              info.bos_token_id)
    store = ResultStore(tmp_path)
    run_perplexity(model, "smollm2", info.bos_token_id, [ScalingSpec.parse("base")], [TokenizedDoc("0", ids)],
                   PerplexityTask("coq", "sliding", (512,), 256), store, Manifest(tmp_path), show_progress=False)
    (row,) = store.read("perplexity").to_dict("records")
    assert row["n_windows"] == n_windows > 10
    assert row["ppl_paper"] == pytest.approx(expected, rel=1e-5)


# ---- The tables layer: summaries and statistics against direct computations on hand-made tables.


def naive_percentile(values, level=0.95):
    values = sorted(values)
    b = len(values)
    return values[math.floor(0.025 * (b - 1))], values[math.ceil(0.975 * (b - 1))]


def test_bootstrap_ppl_interval_is_the_seeded_percentile_bootstrap_over_documents():
    nll, tokens = [100.0 + 13.7 * i + 40 * (i % 3) for i in range(12)], [100 + 7 * i for i in range(12)]
    rng = random.Random(7)
    values = []
    for _ in range(1000):
        picks = [rng.randrange(12) for _ in range(12)]
        values.append(math.exp(sum(nll[i] for i in picks) / sum(tokens[i] for i in picks)))
    assert bootstrap_ppl_interval(nll, tokens, seed=7) == naive_percentile(values)  # identical, not approx
    assert bootstrap_ppl_interval(nll, tokens, seed=7) != bootstrap_ppl_interval(nll, tokens, seed=8)
    assert bootstrap_ppl_interval([50.0], [25], seed=0) == (math.exp(2), math.exp(2))


def test_paired_ppl_ratio_matches_a_naive_loop_with_the_same_seed():
    nll_a, tok_a = [120.0, 260.0, 85.0, 390.0, 160.0, 70.0], [100, 120, 80, 300, 90, 60]
    nll_b, tok_b = [110.0, 270.0, 80.0, 400.0, 150.0, 75.0], [100, 120, 80, 300, 90, 60]
    ratio, low, high = paired_ppl_ratio_interval(nll_a, tok_a, nll_b, tok_b, seed=3)
    direct = math.exp(sum(nll_a) / sum(tok_a)) / math.exp(sum(nll_b) / sum(tok_b))
    assert ratio == pytest.approx(direct, rel=1e-12)
    rng = random.Random(3)
    ratios = []
    for _ in range(1000):
        picks = [rng.randrange(6) for _ in range(6)]
        ppl_a = math.exp(sum(nll_a[i] for i in picks) / sum(tok_a[i] for i in picks))
        ppl_b = math.exp(sum(nll_b[i] for i in picks) / sum(tok_b[i] for i in picks))
        ratios.append(ppl_a / ppl_b)
    assert (low, high) == pytest.approx(naive_percentile(ratios), rel=1e-12)
    assert low <= ratio <= high


def test_pairing_cancels_the_documents_own_difficulty():
    # The method is 2 % better on every token of every document; documents differ a lot.
    tokens = [100, 400, 50, 250]
    nll_b = [100.0, 900.0, 20.0, 600.0]
    nll_a = [x + math.log(0.98) * t for x, t in zip(nll_b, tokens)]
    ratio, low, high = paired_ppl_ratio_interval(nll_a, tokens, nll_b, tokens, seed=0)
    assert (ratio, low, high) == pytest.approx((0.98, 0.98, 0.98), rel=1e-12)
    unpaired = bootstrap_ppl_interval(nll_a, tokens, seed=0)
    assert unpaired[1] / unpaired[0] > 1.5  # each method alone is very uncertain
    with pytest.raises(ValueError, match="differ in length"):
        paired_ppl_ratio_interval(nll_a, tokens, nll_b[:3], tokens[:3], seed=0)


def test_aggregate_is_token_weighted_and_keeps_the_authors_mean():
    docs = pd.DataFrame([doc_row("a", 128, 100, 200.0, window_nll_sum=6.0),
                         doc_row("b", 128, 300, 300.0, window_nll_sum=3.0)])
    (row,) = aggregate_perplexity(docs).to_dict("records")
    assert row["n_docs"] == 2 and row["scored_tokens"] == 400 and row["n_windows"] == 6
    assert row["ppl"] == pytest.approx(math.exp(500 / 400))  # not the mean of exp(2) and exp(1)
    assert row["ppl_paper"] == pytest.approx(math.exp(9 / 6))  # mean over all 6 windows
    expected = bootstrap_ppl_interval([200.0, 300.0], [100, 300], seed=0)
    assert (row["ppl_ci_low"], row["ppl_ci_high"]) == expected
    assert list(aggregate_perplexity(docs).columns) == SCHEMAS["perplexity"]


def test_perplexity_ratios_pair_documents_with_the_reference():
    rows = []
    for length in (128, 256):
        for doc, (tokens, base_nll) in {"a": (100, 200.0), "b": (300, 450.0), "c": (50, 90.0)}.items():
            rows.append(doc_row(doc, length, tokens, base_nll, method="base", factor=1.0))
            rows.append(doc_row(doc, length, tokens, base_nll * 0.9, method="yarn", factor=2.0))
            if doc != "c":  # pi lacks document c: only a and b pair
                rows.append(doc_row(doc, length, tokens, base_nll * 1.1, method="pi", factor=2.0))
    docs = pd.DataFrame(rows)
    ratios = perplexity_ratios(docs, reference="base")
    cells = [(r.method, r.context_length) for r in ratios.itertuples()]
    assert cells == [("pi", 128), ("pi", 256), ("yarn", 128), ("yarn", 256)]
    pi = ratios[ratios["method"] == "pi"].iloc[0]
    assert pi["n_docs"] == 2
    assert pi["ratio"] == pytest.approx(math.exp(1.1 * 650 / 400) / math.exp(650 / 400))
    yarn = ratios[ratios["method"] == "yarn"].iloc[0]
    assert yarn["n_docs"] == 3 and yarn["ratio"] == pytest.approx(math.exp(-0.1 * 740 / 450))
    assert yarn["ratio_ci_low"] <= yarn["ratio"] <= yarn["ratio_ci_high"] < 1
    # against pi as the reference, base is now a row and pi is not
    assert set(perplexity_ratios(docs, reference="pi:2")["method"]) == {"base", "yarn"}
    assert perplexity_ratios(docs, reference="ntk").empty
    twice = pd.concat([docs, docs.assign(factor=4.0)[docs["method"] == "yarn"]])
    with pytest.raises(ValueError, match="more than one series"):
        perplexity_ratios(twice, reference="yarn")


def test_temperature_sweep_curves_have_their_minimum_and_the_formula():
    rows = []
    for s, best in ((2.0, 1.1), (4.0, 1.2)):
        for x in (1.0, 1.1, 1.2, 1.3):
            for length in (128, 256):
                value = 10 + 100 * (x - best) ** 2 if length == 256 else 50.0
                rows.append(dict(model="m", method=f"yarn:attention_factor={x}", factor=s, original_ctx=64,
                                 dataset="d", protocol="truncated", context_length=length, ppl=value))
        rows.append(dict(model="m", method="yarn", factor=s, original_ctx=64, dataset="d",
                         protocol="truncated", context_length=256, ppl=7.0 + s))
    rows.append(dict(model="m", method="base", factor=1.0, original_ctx=64, dataset="d", protocol="truncated",
                     context_length=256, ppl=30.0))
    length, curves = temperature_sweep(pd.DataFrame(rows))
    assert length == 256  # the largest length every s has
    assert [(k["factor"]) for k, _ in ordered_groups(curves, ["factor", "variant"])] == [2.0, 4.0]
    two = curves[curves["factor"] == 2.0]
    assert two["sqrt_inv_t"].tolist() == pytest.approx(sorted([1.0, 1.1, 1.2, 1.3, 0.1 * math.log(2) + 1]))
    assert (two["formula"] == yarn_mscale(2.0)).all()
    # plain `yarn` sits at the formula's √(1/t) with its own perplexity, and is the minimum here
    (best,) = two[two["best"]].to_dict("records")
    assert best["sqrt_inv_t"] == pytest.approx(0.1 * math.log(2) + 1) and best["value"] == 9.0
    four = curves[(curves["factor"] == 4.0) & curves["best"]]
    assert four["value"].item() == 10.0 and four["sqrt_inv_t"].item() == pytest.approx(1.2)
    length, at_128 = temperature_sweep(pd.DataFrame(rows), context_length=128)
    assert length == 128 and (at_128["value"] == 50.0).all()
    assert temperature_sweep(pd.DataFrame(rows[-1:]))[1].empty  # base only: nothing to sweep
    assert temperature_sweep(pd.DataFrame(rows), context_length=512)[1].empty
