"""The re-rotating KV cache for dynamic methods (`--dynamic-cache rerotate`): cached keys follow the
scale of the current length, checked against transformers' own `apply_rotary_pos_emb` applied to
the pre-RoPE keys captured from the model."""
from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from evalharness.methods import ScalingSpec
from evalharness.models import load
from evalharness.passkey import engine as PK
from evalharness.rerotate import RerotatingCache, dynamic_rotary, rerotate_keys, rerotating_cache
from evalharness.ruler.engine import check_dynamic_cache, uses_kv_cache
from evalharness.scaling import apply_scaling

SPEC = "dynamic-yarn:original_ctx=32"


def rotary_at(rotary, length: int, positions: int):
    """(cos, sin) the model's rotary module gives for positions 0…positions−1 of a forward spanning
    `length` positions (its dynamic scale is that of the largest position id + 1)."""
    ids = torch.arange(length)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), ids)
    return cos[:, :positions], sin[:, :positions]


def test_rerotate_keys_equals_rotating_the_raw_keys_at_the_new_scale():
    model, _, _ = load("random:tiny", dtype="float32", device="cpu")
    apply_scaling(model, SPEC)
    rotary = dynamic_rotary(model)
    raw = torch.randn(1, 2, 50, 16, generator=torch.Generator().manual_seed(0))
    cos_old, sin_old = rotary_at(rotary, 50, 50)  # s = 50/32
    cos_new, sin_new = rotary_at(rotary, 90, 50)  # s = 90/32
    old, _ = apply_rotary_pos_emb(raw, raw, cos_old, sin_old)
    expected, _ = apply_rotary_pos_emb(raw, raw, cos_new, sin_new)
    got = rerotate_keys(old, rotary.frequencies(50), rotary.frequencies(90))
    assert rotary.frequencies(50)[1] != rotary.frequencies(90)[1]  # the attention scale changes too
    assert not torch.allclose(old, expected, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_static_and_shipped_rotaries_need_no_rerotating_cache():
    model, _, _ = load("random:tiny", dtype="float32", device="cpu")
    for spec in ("base", "yarn:2", "pi:4"):
        apply_scaling(model, spec)
        assert rerotating_cache(model) is None
    apply_scaling(model, SPEC)
    assert isinstance(rerotating_cache(model), RerotatingCache)


def _raw_keys(model):
    """Forward hooks capturing each layer's pre-RoPE keys [1, kv_heads, n, head_dim]."""
    captured: dict[int, list[torch.Tensor]] = {}
    config = model.config
    heads, dim = config.num_key_value_heads, config.head_dim

    def hook(index):
        def record(_module, _inputs, output):
            captured.setdefault(index, []).append(output.view(1, -1, heads, dim).transpose(1, 2).detach().clone())
        return record

    handles = [layer.self_attn.k_proj.register_forward_hook(hook(i)) for i, layer in enumerate(model.model.layers)]
    return captured, handles


@torch.inference_mode()
def test_cached_keys_follow_the_scale_of_the_current_length(sharp_llama):
    """Prefill 40 tokens (L = 32, s = 40/32), then three one-token steps: after each step every
    layer's cached keys equal transformers' rotation of the captured raw keys at the scale of the
    current length, and the step's logits equal a forward on a plain cache holding those keys."""
    model, _ = sharp_llama
    apply_scaling(model, SPEC)
    rotary = dynamic_rotary(model)
    captured, handles = _raw_keys(model)
    try:
        ids = torch.randint(3, 250, (1, 40), generator=torch.Generator().manual_seed(1))
        cache = rerotating_cache(model)
        out = model(input_ids=ids, cache=cache, use_cache=True)
        for step in range(3):
            token = out.logits[:, -1:].argmax(-1)
            previous_values = [layer.values.clone() for layer in cache.layers]
            plain = DynamicCache()
            length = ids.shape[1] + 1
            cos, sin = rotary_at(rotary, length, length - 1)
            for index, layer in enumerate(cache.layers):
                raw = torch.cat(captured[index], dim=2)
                expected, _ = apply_rotary_pos_emb(raw, raw, cos, sin)
                plain.update(expected, previous_values[index], index)
            out = model(input_ids=token, cache=cache, use_cache=True)
            reference = model(input_ids=token, cache=plain, use_cache=True)
            for index in captured:
                captured[index].pop()  # the reference forward's raw keys are the step's again
            ids = torch.cat([ids, token], dim=1)
            cos, sin = rotary_at(rotary, length, length)
            for index, layer in enumerate(cache.layers):
                raw = torch.cat(captured[index], dim=2)
                expected, _ = apply_rotary_pos_emb(raw, raw, cos, sin)
                torch.testing.assert_close(layer.keys, expected, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=1e-4)
        assert cache.rerotations == 3 * len(cache.layers)
    finally:
        for handle in handles:
            handle.remove()
        apply_scaling(model, "base")


def test_greedy_decode_on_the_rerotated_cache(sharp_llama):
    """Past L: one prefill + one-token steps, the first token equal to the exact decode's (both
    come from the same prefill); within L (no scale change) every token equal to the exact decode's."""
    model, tok = sharp_llama
    apply_scaling(model, SPEC)
    try:
        for seed in range(3):
            long = torch.randint(3, 250, (40,), generator=torch.Generator().manual_seed(seed))
            exact = PK.greedy_decode(model, tok, long, 8, stop_when_decided=False)
            fast = PK.greedy_decode(model, tok, long, 8, stop_when_decided=False, dynamic_cache="rerotate")
            assert exact.cached_steps == 0 and fast.cached_steps == fast.forwards - 1 == len(fast.token_ids) - 1
            assert fast.token_ids[0] == exact.token_ids[0]
            short = long[:20]  # 20 + 8 ≤ 32: the scale stays 1
            assert (PK.greedy_decode(model, tok, short, 8, stop_when_decided=False, dynamic_cache="rerotate").token_ids
                    == PK.greedy_decode(model, tok, short, 8, stop_when_decided=False).token_ids)
    finally:
        apply_scaling(model, "base")


def test_scoring_and_kv_cache_rules():
    dynamic, static = ScalingSpec.parse("dynamic-yarn:original_ctx=32"), ScalingSpec.parse("yarn:2:original_ctx=32")
    assert PK.scoring_for(dynamic, "rerotate") == "paper-rerotate"
    assert PK.scoring_for(dynamic) == PK.scoring_for(static, "rerotate") == "paper"
    assert uses_kv_cache(dynamic, 4096, "rerotate") and not uses_kv_cache(dynamic, 4096)
    assert uses_kv_cache(static, 4096)


def test_a_folder_never_mixes_ruler_decodings():
    manifest = {"cells": {"ruler|m|dynamic-yarn|niah_single_1|4096": {"status": "done", "dynamic_cache": "recompute"},
                          "ruler|m|base|niah_single_1|4096": {"status": "done"}}}
    check_dynamic_cache(manifest, "recompute")
    with pytest.raises(Exception, match="was generated with --dynamic-cache recompute; rerun with --dynamic-cache "
                                        "recompute or write to another --out"):
        check_dynamic_cache(manifest, "rerotate")


def test_passkey_cli_keeps_rerotated_rows_a_series_of_their_own(tmp_path):
    """dynamic-yarn's rows under --dynamic-cache rerotate carry scoring=paper-rerotate (their own
    series and cells: a later exact run into the same folder adds rows instead of skipping them),
    base's stay paper; every rerotated prompt past L ran one prefill + one-token steps."""
    import json

    import pandas as pd

    from evalharness import cli

    out = tmp_path / "pk"
    argv = ["--model", "random:tiny", "--method", "base,dynamic-yarn", "--tasks", "passkey", "--lengths", "400",
            "--depths", "2", "--out", str(out), "--no-progress", "--no-plots"]
    assert cli.main(argv + ["--dynamic-cache", "rerotate"]) == cli.EXIT_OK
    rows = pd.read_csv(out / "passkey.csv")
    assert sorted(zip(rows["method"], rows["scoring"])) == [("base", "paper")] * 2 + [
        ("dynamic-yarn", "paper-rerotate")] * 2
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    rerotated = [cell for name, cell in cells.items() if "paper-rerotate" in name]
    assert len(rerotated) == 2 and all(cell["cached_steps"] == cell["forwards"] - 1 for cell in rerotated)
    assert cli.main(argv) == cli.EXIT_OK
    rows = pd.read_csv(out / "passkey.csv")
    assert sorted(rows.loc[rows["method"] == "dynamic-yarn", "scoring"]) == ["paper"] * 2 + ["paper-rerotate"] * 2
    assert (rows["method"] == "base").sum() == 2
