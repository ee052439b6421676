#!/usr/bin/env python
"""Peak memory per cell: `evalharness.memory`'s estimate, and measured vs estimated side by side.

Part 1 (instant, no model): the estimate for the 7B-class `random:` shapes at 4k … 128k tokens in
bf16 — what a perplexity cell needs before renting a GPU — with SDPA, with eager attention (T×T
scores per head), and with a KV cache kept (generation).

Part 2 (measured): each model × dtype × attention runs in its own child process, which loads the
model, warms it up with a 16-token forward, then for each length measures the peak of the
perplexity engine's own call (`perplexity.token_nll`) above what was alive before it
(`memory.measure_peak_bytes`: CUDA max_memory_allocated on GPU; on CPU the peak RSS after a reset
through /proc/self/clear_refs, with MALLOC_MMAP_THRESHOLD_=65536 so freed blocks leave the resident
set at once). Printed next to it: the estimate of the same quantity, total − weights =
kv_cache + max(activations, lm_head_chunk), and their ratio.

    nice -n 19 python benchmarks/bench_memory.py                      # CPU: small shapes, 256…2048
    python benchmarks/bench_memory.py --models random:llama2-7b --dtypes bfloat16 --device cuda \
        --lengths 4k,16k,32k
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evalharness import memory  # noqa: E402

# Llama shapes small enough to measure on a CPU in seconds (besides models.RANDOM_SHAPES).
SMALL_SHAPES = {
    "small-mlp": dict(hidden_size=256, intermediate_size=2048, num_hidden_layers=3, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=32, vocab_size=64, tie_word_embeddings=False),
    "small-vocab": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, head_dim=32, vocab_size=32000, tie_word_embeddings=True),
}
BIG_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
GB = 1e9


def parse_args(argv=None):
    from evalharness.options import parse_lengths

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="random:tiny,small-mlp,small-vocab",
                   help=f"random:NAME or one of {', '.join(SMALL_SHAPES)}")
    p.add_argument("--lengths", default="256,512,1024,2048")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--attn-impls", default="sdpa,eager")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=None, help="LM-head chunk (default: the engine's)")
    p.add_argument("--skip-measure", action="store_true", help="print part 1 only")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # child-process mode: one JSON job
    args = p.parse_args(argv)
    args.length_list = parse_lengths(args.lengths)
    return args


def config_for(name: str):
    """The transformers config of a bench model name."""
    import transformers

    from evalharness.models import RANDOM_SHAPES

    if name.startswith("random:"):
        kwargs = dict(RANDOM_SHAPES[name.removeprefix("random:")])
        return transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    return transformers.AutoConfig.for_model("llama", max_position_embeddings=4096, **SMALL_SHAPES[name])


def print_estimates() -> None:
    from evalharness.models import RANDOM_SHAPES

    print("Estimated peak memory of one perplexity cell, bf16 (GB = 1e9 bytes; "
          "total = weights + KV cache + max(activations, LM-head phase))")
    header = f"{'model':<12}{'length':>8}{'weights':>9}{'activ.':>9}{'head':>8}{'SDPA':>9}{'eager':>9}{'+KV':>9}"
    print(header)
    for name in ("llama2-7b", "llama3-8b", "mistral-7b"):
        shape = RANDOM_SHAPES[name]
        for length in BIG_LENGTHS:
            sdpa = memory.estimate_peak_bytes(shape, "bf16", length)
            eager = memory.estimate_peak_bytes(shape, "bf16", length, attn_impl="eager")
            cached = memory.estimate_peak_bytes(shape, "bf16", length, kv_cache=True)
            print(f"{name:<12}{length:>8}{sdpa['weights'] / GB:>9.1f}{sdpa['activations'] / GB:>9.1f}"
                  f"{sdpa['lm_head_chunk'] / GB:>8.2f}{sdpa['total'] / GB:>9.1f}{eager['total'] / GB:>9.1f}"
                  f"{cached['total'] / GB:>9.1f}")
    line = memory.format_estimate(memory.estimate_peak_bytes(RANDOM_SHAPES["llama2-7b"], "bf16", 131072))
    print(f"\n7B (llama2-7b shape) at 128k, bf16, SDPA: {line}")
    line = memory.format_estimate(memory.estimate_peak_bytes(RANDOM_SHAPES["llama3-8b"], "bf16", 131072))
    print(f"8B (llama3-8b shape) at 128k, bf16, SDPA: {line}\n")


def run_child(job: dict) -> None:
    """Load one model, then measure the engine's call at each length; print one JSON line."""
    import torch
    import transformers

    from evalharness.models import load
    from evalharness.perplexity.engine import token_nll

    dtype = getattr(torch, job["dtype"])
    if job["model"].startswith("random:"):
        model, _, _ = load(job["model"], dtype=dtype, device=job["device"], attn_impl=job["attn_impl"])
    else:
        torch.manual_seed(0)
        with torch.device(job["device"]):
            model = transformers.AutoModelForCausalLM.from_config(
                config_for(job["model"]), dtype=dtype, attn_implementation=job["attn_impl"]).eval()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    token_nll(model, torch.randint(3, vocab, (16,), generator=generator), 1, job["chunk_size"])
    peaks = {}
    for length in job["lengths"]:
        ids = torch.randint(3, vocab, (length,), generator=generator)
        try:
            _, peaks[length] = memory.measure_peak_bytes(lambda: token_nll(model, ids, 1, job["chunk_size"]),
                                                         job["device"])
        except torch.OutOfMemoryError:
            peaks[length] = None
    print("MEASURED " + json.dumps(peaks))


def measure(args) -> None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TQDM_DISABLE="1")
    print(f"Measured vs estimated peak above the loaded weights (MB = 2^20 bytes), device {args.device}")
    print(f"{'model':<18}{'dtype':<10}{'attn':<7}{'length':>7}{'measured':>10}{'estimated':>11}{'ratio':>7}")
    for name in args.models.split(","):
        config = config_for(name)
        for dtype in args.dtypes.split(","):
            for attn in args.attn_impls.split(","):
                job = dict(model=name, dtype=dtype, attn_impl=attn, device=args.device, lengths=args.length_list,
                           chunk_size=args.chunk_size)
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                                      text=True, env=env, cwd=ROOT)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("MEASURED ")), None)
                if proc.returncode != 0 or line is None:
                    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
                    print(f"{name:<18}{dtype:<10}{attn:<7} failed: {tail}")
                    continue
                for length, peak in json.loads(line[len("MEASURED "):]).items():
                    est = memory.estimate_peak_bytes(config, dtype, int(length), chunk_size=args.chunk_size,
                                                     attn_impl=attn)
                    expected = est["total"] - est["weights"]
                    got = "OOM" if peak is None else f"{peak / 2**20:.1f}"
                    ratio = "" if peak is None else f"{peak / expected:.3f}"
                    print(f"{name:<18}{dtype:<10}{attn:<7}{int(length):>7}{got:>10}{expected / 2**20:>11.1f}"
                          f"{ratio:>7}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(json.loads(args.child))
        return 0
    print_estimates()
    if not args.skip_measure:
        measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
