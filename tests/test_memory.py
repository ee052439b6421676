"""The peak-memory estimate: exact parameter counts, hand-worked terms, and the estimate against
what the engine's own path allocates.

What a user relies on: the estimate plans a run, so it must be an upper bound of the peak, not far
above it, and it must grow with the length as the formula says.

- Default run (deterministic, any machine): `memory.measure_tensor_peak_bytes` counts the tensor
  storages the call allocates, the way CUDA's allocator statistics do (storage sizes; no allocator
  overhead, no kernel scratch), by intercepting every operator. On every case the estimate is an
  upper bound of that peak within `FACTOR` (measured ≤ estimate ≤ FACTOR · measured); where the
  formula models the code exactly (float32, and SDPA in 16 bits) it equals the measurement to
  `EXACT` and its slope over length equals the measured slope. 16-bit eager attention is an upper
  bound only: the formula counts the fp32 copy of the scores that torch's CPU softmax makes inside
  its kernel (seen in peak RSS, not by operator-level accounting), and for a 16-bit LM head in one
  chunk 8 bytes per logit where the operators keep 6 alive.
- `machine` (peak RSS, depends on the allocator and the CPU's kernels, e.g. oneDNN's bf16 weight
  reorders, AVX-512 or not): the estimate bounds the peak resident-set growth within a loose factor.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from evalharness import memory
from evalharness.models import RANDOM_SHAPES
from evalharness.perplexity.engine import token_nll

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20
FACTOR = 1.35  # estimate ≤ FACTOR · measured tensor peak (16-bit eager attention ≈ 1.24, one 16-bit head chunk 1.33)
EXACT = 0.005  # relative difference where the formula is exact (the rest: a few kB of small tensors)

# Llama shapes small enough for a quick CPU forward, each making one term dominate.
MLP_HEAVY = dict(hidden_size=256, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, vocab_size=64, tie_word_embeddings=False)
HEAD_HEAVY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=32, vocab_size=32000, tie_word_embeddings=True)
KV_HEAVY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8, head_dim=64, vocab_size=64, tie_word_embeddings=False)

CASES = [  # (shape, length, attn_impl, chunk_size, dtype, exact)
    (MLP_HEAVY, 1024, "sdpa", None, "float32", True),
    (MLP_HEAVY, 2048, "sdpa", None, "float32", True),
    (MLP_HEAVY, 512, "eager", None, "float32", True),  # MLP phase with the kept attention weights
    (MLP_HEAVY, 1024, "eager", None, "float32", True),
    (MLP_HEAVY, 2048, "eager", None, "float32", True),
    (HEAD_HEAVY, 1024, "sdpa", 256, "float32", True),
    (MLP_HEAVY, 1024, "sdpa", None, "bfloat16", True),
    (MLP_HEAVY, 1024, "eager", None, "bfloat16", False),
    (HEAD_HEAVY, 512, "sdpa", 256, "bfloat16", True),
    (HEAD_HEAVY, 256, "sdpa", None, "bfloat16", False),  # one chunk: 6·c·V measured, 8·c·V estimated
]


def llama_config(shape: dict):
    return transformers.AutoConfig.for_model("llama", max_position_embeddings=4096, **shape)


_models: dict = {}


def build(shape: dict, attn_impl: str, dtype: str):
    key = (json.dumps(shape, sort_keys=True), attn_impl, dtype)
    if key not in _models:
        torch.manual_seed(0)
        _models[key] = transformers.AutoModelForCausalLM.from_config(
            llama_config(shape), dtype=getattr(torch, dtype), attn_implementation=attn_impl).eval()
    return _models[key]


def tensor_peak(shape, length, attn_impl, chunk_size, dtype) -> int:
    model = build(shape, attn_impl, dtype)
    ids = torch.randint(3, shape["vocab_size"], (length,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, peak, retained = memory.measure_tensor_peak_bytes(lambda: token_nll(model, ids, 1, chunk_size))
    assert retained == 4 * (length - 1)  # only the result, the fp32 NLLs, outlives the call
    return peak


def engine_estimate(shape, length, attn_impl, chunk_size, dtype) -> int:
    """total − weights: what the engine allocates on top of the loaded model."""
    est = memory.estimate_peak_bytes(llama_config(shape), dtype, length, chunk_size=chunk_size, attn_impl=attn_impl)
    return max(est["activations"], est["lm_head_chunk"])


@pytest.mark.parametrize("case", CASES, ids=[f"{'mlp' if c[0] is MLP_HEAVY else 'head'}-{c[1]}-{c[2]}-{c[4]}"
                                               for c in CASES])
def test_estimate_bounds_the_tensor_peak(case):
    *cell, exact = case
    measured, estimated = tensor_peak(*cell), engine_estimate(*cell)
    print(f"{cell[2]} {cell[4]} T={cell[1]}: tensors {measured / MB:.2f} MiB, estimated {estimated / MB:.2f} MiB")
    assert measured <= estimated <= FACTOR * measured, (measured / MB, estimated / MB)
    if exact:
        assert estimated == pytest.approx(measured, rel=EXACT), (measured / MB, estimated / MB)


SLIDING_FACTOR = 2.5  # the kernel's hidden T²·b copy of the mask is in the estimate, not in the measurement
# A Gemma 3 shape: 5 sliding-window layers (window 64) and one full layer; T > window.
GEMMA_SLIDING = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                     num_key_value_heads=1, head_dim=16, vocab_size=512, sliding_window=64,
                     max_position_embeddings=4096)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("length, prefill_chunk", [(1024, None), (2048, None), (2048, 512)])
def test_sliding_window_estimate_bounds_the_tensor_peak(length, prefill_chunk, dtype):
    """With sliding layers the decoder gets an explicit mask (T×T one-shot, C×T chunked): the
    estimate bounds the operator-level peak, within a looser factor than FACTOR because it also
    counts the additive copy the CPU kernel makes inside (peak RSS, benchmarks/results/
    cpu-gemma3-270m-chunked.txt), which operator-level accounting cannot see."""
    config = transformers.Gemma3TextConfig(**GEMMA_SLIDING)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM._from_config(config, dtype=getattr(torch, dtype),
                                                        attn_implementation="sdpa").eval()
    ids = torch.randint(3, 512, (length,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, measured, _ = memory.measure_tensor_peak_bytes(
            lambda: token_nll(model, ids, 1, None, prefill_chunk=prefill_chunk))
    est = memory.estimate_peak_bytes(model.config, dtype, length, attn_impl="sdpa", prefill_chunk=prefill_chunk)
    estimated = est["total"] - est["weights"]
    assert measured <= estimated <= SLIDING_FACTOR * measured, (measured / MB, estimated / MB)


@pytest.mark.parametrize("attn_impl, growth", [("sdpa", "linear"), ("eager", "quadratic")])
def test_peak_grows_with_length_as_the_formula_says(attn_impl, growth):
    """Measured and estimated growth from 1024 to 2048 tokens agree (float32, MLP-heavy shape)."""
    cells = [(MLP_HEAVY, n, attn_impl, None, "float32") for n in (1024, 2048)]
    measured = [tensor_peak(*cell) for cell in cells]
    estimated = [engine_estimate(*cell) for cell in cells]
    assert estimated[1] - estimated[0] == pytest.approx(measured[1] - measured[0], rel=0.01)
    ratio = estimated[1] / estimated[0]
    assert ratio == pytest.approx(2, rel=0.01) if growth == "linear" else ratio > 3.5


def test_kv_cache_term_is_the_cache_tensors():
    """The decoder with `use_cache=True` keeps exactly `kv_cache` bytes (plus its output hidden
    states) after it returns; its peak is bounded by activations + cache."""
    length = 1024
    model = build(KV_HEAVY, "sdpa", "float32")
    ids = torch.randint(3, 64, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out, peak, retained = memory.measure_tensor_peak_bytes(lambda: model.model(input_ids=ids, use_cache=True))
    est = memory.estimate_peak_bytes(llama_config(KV_HEAVY), "float32", length, kv_cache=True)
    hidden_out = length * KV_HEAVY["hidden_size"] * 4
    assert retained == est["kv_cache"] + hidden_out
    assert peak <= est["activations"] + est["kv_cache"] <= FACTOR * peak
    del out


# ---------------------------------------------------------------------------------------------
# Peak RSS (machine): the allocator and the CPU's kernels decide; loose bounds
# ---------------------------------------------------------------------------------------------

RSS_FACTOR, RSS_SLACK = 2.0, 32 * MB  # measured RSS growth ≤ RSS_FACTOR · estimate + RSS_SLACK, and ≥ estimate / 2

CHILD = r"""
import json, sys
import torch, transformers
from evalharness.memory import measure_peak_bytes
from evalharness.perplexity.engine import token_nll

results = []
for shape, length, attn_impl, chunk_size, dtype in json.loads(sys.argv[1]):
    config = transformers.AutoConfig.for_model("llama", max_position_embeddings=4096, **shape)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                          attn_implementation=attn_impl).eval()
    ids = torch.randint(3, shape["vocab_size"], (length,), generator=torch.Generator().manual_seed(0))
    token_nll(model, ids[:16], 1, chunk_size)  # warm-up: lazy initialisation, code pages
    _, peak = measure_peak_bytes(lambda: token_nll(model, ids, 1, chunk_size))
    results.append(peak)
    del model
print("MEASURED " + json.dumps(results))
"""

RSS_CASES = [case[:5] for case in CASES if case[1] >= 1024]


def clear_refs_available() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@pytest.mark.machine
def test_estimate_bounds_the_peak_rss_loosely():
    """Peak RSS growth of the engine's path (child process, MALLOC_MMAP_THRESHOLD_=65536 so glibc
    returns freed blocks at once) is within [estimate / 2, 2 · estimate + 32 MiB] on any x86
    machine: the slack holds oneDNN's bf16 weight reorders, per-thread buffers and page rounding."""
    if not clear_refs_available():
        pytest.skip("peak-RSS reset (/proc/self/clear_refs) is not available here")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(RSS_CASES)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("MEASURED "))
    for cell, peak in zip(RSS_CASES, json.loads(line[len("MEASURED "):])):
        estimated = engine_estimate(*cell)
        print(f"{cell[2]} {cell[4]} T={cell[1]}: peak RSS {peak / MB:.1f} MiB, estimated {estimated / MB:.1f} MiB")
        assert estimated / 2 <= peak <= RSS_FACTOR * estimated + RSS_SLACK, (cell, peak / MB, estimated / MB)


@pytest.mark.parametrize("shape", [*RANDOM_SHAPES, "qwen2-biases", "tied", "llama-biases"])
def test_parameter_count_is_exact(shape):
    """weights = n_params·b, n_params from the config formula == the instantiated model's count."""
    if shape in RANDOM_SHAPES:
        kwargs = dict(RANDOM_SHAPES[shape])
        model_type = kwargs.pop("model_type")
    else:
        kwargs = dict(MLP_HEAVY, tie_word_embeddings=shape == "tied")
        model_type = "qwen2" if shape == "qwen2-biases" else "llama"
        if shape == "llama-biases":
            kwargs.update(attention_bias=True, mlp_bias=True)
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())
    assert memory.parameter_count(memory.model_shape(config)) == expected
    assert memory.estimate_peak_bytes(config, torch.bfloat16, 128)["weights"] == 2 * expected


def test_dict_shapes_equal_config_shapes():
    """models.RANDOM_SHAPES entries (dicts) give the same estimate as their transformers configs."""
    kwargs = dict(RANDOM_SHAPES["llama3-8b"])
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    assert memory.estimate_peak_bytes(RANDOM_SHAPES["llama3-8b"], "bf16", 4096) == \
        memory.estimate_peak_bytes(config, torch.bfloat16, 4096)


def test_default_chunk_is_the_engines():
    from evalharness.perplexity.engine import head_chunk_size

    for vocab in (64, 32000, 128256, 10**7):
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                          num_attention_heads=1)
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config)
        assert memory.default_chunk_size(vocab) == head_chunk_size(model)


def test_hand_worked_7b_at_128k():
    """llama2-7b shape, bf16, 128k tokens, SDPA: every term by hand."""
    T, H, I, V, L, b = 131072, 4096, 11008, 32000, 32, 2  # noqa: E741 (the formulas' symbols)
    est = memory.estimate_peak_bytes(RANDOM_SHAPES["llama2-7b"], "bfloat16", T)
    n_params = 2 * V * H + H + L * (4 * H * H + 3 * H * I + 2 * H)
    assert n_params == 6_738_415_616  # Llama-2-7B's published parameter count
    assert est["weights"] == n_params * b
    mlp_phase = 2 * 8 * T + 2 * T * 128 * b + 2 * T * H * b + 2 * T * H * b + 3 * T * I * b
    assert est["activations"] == mlp_phase
    chunk = (256 * 2**20) // (4 * V)
    assert est["lm_head_chunk"] == T * H * b + 12 * T + (8 + b) * chunk * V
    assert est["kv_cache"] == 0
    assert est["total"] == est["weights"] + est["activations"]
    assert memory.format_bytes(est["total"]) == "≈ 26.5 GB"
    with_cache = memory.estimate_peak_bytes(RANDOM_SHAPES["llama2-7b"], "bfloat16", T, kv_cache=True)
    assert with_cache["kv_cache"] == 2 * L * T * H * b  # 64 GiB: why generation at 128k keeps no cache
    assert with_cache["total"] == est["total"] + with_cache["kv_cache"]


def test_eager_is_quadratic_and_sdpa_linear():
    small = memory.estimate_peak_bytes(RANDOM_SHAPES["mistral-7b"], "bf16", 8192, attn_impl="eager")
    large = memory.estimate_peak_bytes(RANDOM_SHAPES["mistral-7b"], "bf16", 16384, attn_impl="eager")
    assert large["activations"] / small["activations"] == pytest.approx(4, rel=0.05)
    sdpa = [memory.estimate_peak_bytes(RANDOM_SHAPES["mistral-7b"], "bf16", n)["activations"] for n in (8192, 16384)]
    assert sdpa[1] == 2 * sdpa[0]


@pytest.mark.parametrize("bad, message", [
    (dict(dtype="int8"), "unknown dtype"),
    (dict(attn_impl="paged"), "unknown attention implementation"),
    (dict(length=0), "positive number of tokens"),
])
def test_bad_input_names_the_value(bad, message):
    kwargs = dict(dtype="bf16", length=1024) | bad
    attn = {"attn_impl": kwargs.pop("attn_impl")} if "attn_impl" in kwargs else {}
    with pytest.raises(ValueError, match=message):
        memory.estimate_peak_bytes(RANDOM_SHAPES["tiny"], kwargs["dtype"], kwargs["length"], **attn)


def test_format():
    assert memory.format_bytes(17.34e9) == "≈ 17.3 GB"
    assert memory.format_bytes(2.5e6) == "≈ 2.5 MB"
    line = memory.format_estimate(memory.estimate_peak_bytes(RANDOM_SHAPES["llama2-7b"], "bf16", 4096, kv_cache=True))
    # 13.48 GB weights + 0.70 GB head phase (> 0.41 GB decoder activations) + 2.15 GB cache
    assert line.startswith("≈ 16.3 GB (weights ≈ 13.5 GB") and "KV cache ≈ 2.1 GB" in line
