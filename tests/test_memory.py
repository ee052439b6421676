"""The peak-memory estimate against exact parameter counts and against peak memory measured on CPU.

Measurement: one child process (started with MALLOC_MMAP_THRESHOLD_=65536, so glibc unmaps every
freed block of ≥ 64 kB at once and the resident set follows the live tensor bytes) builds random
fp32 and bf16 Llama models, warms each up with a 16-token forward, then for each case resets the peak RSS
(/proc/self/clear_refs) and runs the engine's own path (`perplexity.token_nll`, or the decoder with
`use_cache=True` for the KV-cache term); measured = VmHWM − VmRSS before the call.

Tolerance: |measured − estimated| ≤ 5 % of the estimate + 4 MiB. The 4 MiB absorb what the estimate
deliberately leaves out and does not grow with the length: page rounding of each block, allocator
and Python-object overhead, per-thread kernel buffers, oneDNN's bf16 weight reorders (a constant
≈ 2.5 MiB here). 5 % is small enough that leaving out one [T, I] buffer of the MLP (−14 % on the
MLP-heavy shape) fails; the slope test catches any missing per-token term more sharply still.
Observed on this machine (`pytest -s` prints them): |error| ≤ 3.1 MiB on 14–86 MiB peaks without a
cache; 4.0 MiB with one, the estimate's known double count (the peak layer's k, v sit both in the
cache and in its attention phase: 2·T·n_kv·hd·b too many).
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

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20
RELATIVE_TOLERANCE, ABSOLUTE_SLACK = 0.05, 4 * MB

# Llama shapes small enough for a quick CPU forward, each making one term dominate.
MLP_HEAVY = dict(hidden_size=256, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, vocab_size=64, tie_word_embeddings=False)
HEAD_HEAVY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=32, vocab_size=32000, tie_word_embeddings=True)
KV_HEAVY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8, head_dim=64, vocab_size=64, tie_word_embeddings=False)

CASES = [
    dict(config=MLP_HEAVY, length=1024, attn_impl="sdpa", chunk_size=None, mode="engine", dtype="float32"),
    dict(config=MLP_HEAVY, length=2048, attn_impl="sdpa", chunk_size=None, mode="engine", dtype="float32"),
    dict(config=MLP_HEAVY, length=1024, attn_impl="eager", chunk_size=None, mode="engine", dtype="float32"),
    dict(config=HEAD_HEAVY, length=1024, attn_impl="sdpa", chunk_size=256, mode="engine", dtype="float32"),
    dict(config=KV_HEAVY, length=1024, attn_impl="sdpa", chunk_size=None, mode="cache", dtype="float32"),
    # 16-bit branches: fp32 RMSNorm/softmax copies, the previous chunk's logits, one chunk only
    dict(config=MLP_HEAVY, length=1024, attn_impl="sdpa", chunk_size=None, mode="engine", dtype="bfloat16"),
    dict(config=MLP_HEAVY, length=1024, attn_impl="eager", chunk_size=None, mode="engine", dtype="bfloat16"),
    dict(config=HEAD_HEAVY, length=512, attn_impl="sdpa", chunk_size=256, mode="engine", dtype="bfloat16"),
    dict(config=HEAD_HEAVY, length=256, attn_impl="sdpa", chunk_size=None, mode="engine", dtype="bfloat16"),
]

CHILD = r"""
import json, sys
import torch, transformers
from evalharness.memory import measure_peak_bytes, _proc_status_bytes
from evalharness.perplexity import token_nll

def build(config, attn_impl, dtype):
    config = transformers.AutoConfig.for_model("llama", max_position_embeddings=4096, **config)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_impl)
    return model.eval()

results = []
for case in json.loads(sys.argv[1]):
    model = build(case["config"], case["attn_impl"], getattr(torch, case["dtype"]))
    ids = torch.randint(3, case["config"]["vocab_size"], (case["length"],), generator=torch.Generator().manual_seed(0))
    if case["mode"] == "engine":
        token_nll(model, ids[:16], 1, case["chunk_size"])  # warm-up: lazy initialisation, code pages
        _, peak = measure_peak_bytes(lambda: token_nll(model, ids, 1, case["chunk_size"]))
        results.append({"peak": peak})
    else:
        with torch.inference_mode():
            model.model(input_ids=ids[None, :16], use_cache=True)
            before = _proc_status_bytes("VmRSS")
            out, peak = measure_peak_bytes(lambda: model.model(input_ids=ids[None], use_cache=True))
            retained = _proc_status_bytes("VmRSS") - before
        results.append({"peak": peak, "retained": retained})
    del model
print("MEASURED " + json.dumps(results))
"""


def clear_refs_available() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def measured():
    if not clear_refs_available():
        pytest.skip("peak-RSS reset (/proc/self/clear_refs) is not available here")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("MEASURED "))
    return json.loads(line[len("MEASURED "):])


def llama_config(shape: dict):
    return transformers.AutoConfig.for_model("llama", **shape)


def within_tolerance(measured_bytes: int, estimated_bytes: int) -> bool:
    return abs(measured_bytes - estimated_bytes) <= RELATIVE_TOLERANCE * estimated_bytes + ABSOLUTE_SLACK


@pytest.mark.parametrize("index", range(len(CASES)))
def test_estimate_matches_measured_peak_on_cpu(measured, index):
    case = CASES[index]
    estimate = memory.estimate_peak_bytes(llama_config(case["config"]), case["dtype"], case["length"],
                                          kv_cache=case["mode"] == "cache", chunk_size=case["chunk_size"],
                                          attn_impl=case["attn_impl"])
    if case["mode"] == "engine":
        expected = max(estimate["activations"], estimate["lm_head_chunk"])  # total − weights
    else:  # decoder only, its cache kept: no LM head
        expected = estimate["activations"] + estimate["kv_cache"]
        assert within_tolerance(measured[index]["retained"], estimate["kv_cache"])
    got = measured[index]["peak"]
    print(f"{case['mode']} {case['attn_impl']} {case['dtype']} T={case['length']}: measured {got / MB:.1f} MiB, "
          f"estimated {expected / MB:.1f} MiB")
    assert within_tolerance(got, expected), (got / MB, expected / MB)


def test_peak_grows_with_length_as_measured(measured):
    """The estimate's slope over length (MLP-heavy shape, 1024 → 2048) matches the measured slope."""
    config = llama_config(MLP_HEAVY)
    est = [memory.estimate_peak_bytes(config, "fp32", n)["activations"] for n in (1024, 2048)]
    slope_measured = (measured[1]["peak"] - measured[0]["peak"]) / 1024
    slope_estimated = (est[1] - est[0]) / 1024
    assert slope_measured == pytest.approx(slope_estimated, rel=0.05)


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
    from evalharness.perplexity import head_chunk_size

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
