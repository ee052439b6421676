#!/usr/bin/env python
"""Chunked prefill vs one-shot forward: wall time and peak memory of one truncated-perplexity pass.

Each (length, plan) runs in its own child process, which loads the model, warms it up with a
short forward, then times `perplexity.token_nll` over the first `length` tokens of one document
(BOS + length − 1 tokens, every token after the first scored) and measures its peak above what
was alive before it (`memory.measure_peak_bytes`: CUDA max_memory_allocated on GPU; on CPU the peak
RSS after a reset through /proc/self/clear_refs, with MALLOC_MMAP_THRESHOLD_=65536 so freed blocks
leave the resident set at once). The two plans' NLL sums are printed too: they must agree to
fp32 rounding. Printed per length: one-shot and chunked time and peak, and the ratios chunked /
one-shot, next to the estimate of each plan (`prefill.plan_prefill`, total − weights).

    python benchmarks/bench_chunked.py --model gemma3-270m --lengths 8k,16k,32k --chunk 2048
    python benchmarks/bench_chunked.py --model gemma3-270m --lengths 2k --chunk 512   # a quick check

The text is the first PG-19 book long enough (`--data`, a .jsonl with a `text` field), else a
deterministic synthetic text.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 1e6


def parse_args(argv=None):
    from evalharness.options import parse_count, parse_lengths

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--lengths", default="8k,16k,32k")
    p.add_argument("--chunk", type=parse_count, default=2048, help="prefill chunk of the chunked plan")
    p.add_argument("--method", default="base", help="scaling spec applied before the forward (e.g. yarn:2)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "corpora" / "pg19" / "test.jsonl"),
                   help="jsonl with a text field (first record long enough); missing: synthetic text")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # child-process mode: one JSON job
    args = p.parse_args(argv)
    args.length_list = parse_lengths(args.lengths)
    return args


def document_ids(tokenizer, length: int, data: str):
    """Token ids (no special tokens) of at least `length` tokens."""
    import torch

    if data and Path(data).is_file():
        with open(data) as handle:
            for line in handle:
                ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
                if len(ids) >= length:
                    return torch.tensor(ids[:length])
    text = " ".join(f"Sentence {i}: the grass is green and the sky is blue, {i * 7919 % 1000}." for i in range(length))
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:length])


def child(job: dict) -> dict:
    import torch

    from evalharness import models
    from evalharness.memory import measure_peak_bytes
    from evalharness.perplexity.engine import truncated_nll
    from evalharness.scaling import apply_scaling

    torch.manual_seed(0)
    model, tokenizer, info = models.load(job["model"], dtype=job["dtype"], device=job["device"])
    apply_scaling(model, job["method"])
    ids = document_ids(tokenizer, job["length"], job["data"])
    truncated_nll(model, ids, 32, info.bos_token_id)  # warm-up
    chunk = job["chunk"]
    start = time.perf_counter()
    nll, peak = measure_peak_bytes(lambda: truncated_nll(model, ids, job["length"], info.bos_token_id,
                                                         prefill_chunk=chunk), job["device"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": peak, "nll_sum": float(nll.double().sum()), "tokens": int(nll.numel())}


def run_child(args, length: int, chunk: int | None) -> dict:
    job = dict(model=args.model, dtype=args.dtype, device=args.device, method=args.method, length=length,
               chunk=chunk, data=args.data)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def estimates(args, length: int) -> tuple[float, float]:
    """Estimated peak above the weights of the one-shot and the chunked plan."""
    from evalharness import models
    from evalharness.prefill import plan_prefill

    model, _, info = models.load(args.model, dtype=args.dtype, device="cpu", weights=False)
    n_params = sum(p.numel() for p in model.parameters())
    attn = getattr(model.config, "_attn_implementation", None)
    values = []
    for option in ("off", args.chunk):
        _, est = plan_prefill(model.config, info.dtype, args.device, option, length, attn_impl=attn,
                              n_params=n_params)
        values.append(est["total"] - est["weights"])
    return values[0], values[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    print(f"# {args.model} {args.dtype} on {args.device}, method {args.method}, chunk {args.chunk}; "
          "each run in its own process; peak = above what was alive before the call; est = plan_prefill")
    print(f"{'length':>7} {'one-shot s':>11} {'chunked s':>10} {'time ×':>7} {'one-shot MB':>12} {'chunked MB':>11} "
          f"{'peak ×':>7} {'est one MB':>11} {'est chk MB':>11} {'|Δ nll sum| / sum':>18}")
    for length in args.length_list:
        one, chunked = run_child(args, length, None), run_child(args, length, args.chunk)
        est_one, est_chunked = estimates(args, length)
        if "error" in one or "error" in chunked:
            print(f"{length:>7} one-shot: {one.get('error', 'ok')}; chunked: {chunked.get('error', 'ok')}")
            continue
        diff = abs(one["nll_sum"] - chunked["nll_sum"]) / abs(one["nll_sum"])
        print(f"{length:>7} {one['seconds']:>11.1f} {chunked['seconds']:>10.1f} "
              f"{chunked['seconds'] / one['seconds']:>7.2f} {one['peak'] / MB:>12.0f} {chunked['peak'] / MB:>11.0f} "
              f"{chunked['peak'] / one['peak']:>7.2f} {est_one / MB:>11.0f} {est_chunked / MB:>11.0f} {diff:>18.2e}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
