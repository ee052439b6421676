#!/usr/bin/env python
"""Side-by-side benchmark of the truncated perplexity curve: the usual loop vs the engine.

On the same model and documents, for lengths 2k … L_max step 2k:
  (a) reference — the authors' protocol done the usual way: per length one
      `model(input_ids, labels=...)` call (full [T, vocab] logits, KV cache at its default);
  (b) engine    — evalharness: one decoder pass at L_max, LM head + cross-entropy in chunks;
  (c) floor     — one bare decoder forward at L_max: no head, no loss (the engine's lower bound);
  (d) positions — the engine plus the loss-by-position buckets of every length, as a run writes
      them to perplexity_positions*.csv (phase off by default: --phases engine,positions).
Every phase counts the decoder forwards it runs (a hook on the decoder): positions must run
exactly as many as the engine — the buckets come from the same per-token NLLs.
Each phase runs in its own child process so its peak memory is its own (RSS on CPU via
getrusage; torch.cuda.max_memory_allocated on GPU). Printed: wall times, peaks, the largest
relative difference between (a) and (b) perplexities, and the ratios
reference/engine time, engine/floor time, reference/engine peak memory.

GPU extras: tokens/s and model FLOPs utilisation of the engine pass,
    MFU = FLOPs / (time × peak FLOP/s), FLOPs = 2·N·T + 2·n_layers·T²·d_attn
(N = non-embedding parameters incl. the LM head: 2 FLOPs per parameter per token for the dense
matmuls; attention scores and the value product: 2·T²·d_attn per layer with causal masking
halving the 4·T²·d_attn of full attention; d_attn = heads × head_dim). Peak FLOP/s defaults to
989e12 (H100/H200 dense bf16), override with --peak-tflops.

A random model's perplexity is meaningless (the bench says so); its speed and memory are not.

    python benchmarks/bench_perplexity.py --model smollm2-135m --max-length 16k
    python benchmarks/bench_perplexity.py --model random:llama2-7b --lengths 32k,64k,128k --phases engine,floor
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None):
    from evalharness.options import parse_count, parse_lengths

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="coq-stdlib")
    p.add_argument("--docs", type=int, default=1)
    p.add_argument("--max-length", type=parse_count, default=16384)
    p.add_argument("--step", type=parse_count, default=2048)
    p.add_argument("--lengths", default=None, help="explicit lengths (overrides --max-length/--step)")
    p.add_argument("--method", default="yarn:2")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--attn-impl", default="sdpa")
    p.add_argument("--phases", default="reference,engine,floor")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args(argv)
    args.length_list = parse_lengths(args.lengths) if args.lengths else parse_lengths(
        f"{args.step}:{args.max_length}:{args.step}")
    return args


def load(args):
    from evalharness import corpora, models
    from evalharness.scaling import apply_scaling

    model, tokenizer, info = models.load(args.model, dtype=args.dtype, device=args.device, attn_impl=args.attn_impl)
    apply_scaling(model, args.method)
    l_max = max(args.length_list)
    if args.model.startswith("random:"):
        import torch

        generator = torch.Generator().manual_seed(0)
        vocab = min(len(tokenizer), info.vocab_size)
        docs = [torch.randint(3, vocab, (l_max,), generator=generator) for _ in range(args.docs)]
    else:
        docs = [d.ids for d in corpora.load_corpus(args.dataset, tokenizer, min_tokens=l_max, n_docs=args.docs)]
    return model, info, docs


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def phase_reference(model, info, docs, lengths):
    """Per length: model(ids, labels=ids) — full logits, loss by transformers, cache at its default."""
    import torch

    from evalharness.perplexity.engine import with_bos

    device = model.get_output_embeddings().weight.device
    out = {}
    with torch.inference_mode():
        for i, doc in enumerate(docs):
            sequence = with_bos(doc, info.bos_token_id)
            for length in lengths:
                ids = sequence[:length][None].to(device)
                loss = model(ids, labels=ids).loss
                out[f"{i}:{length}"] = float(loss) * (length - 1)
                del loss
    return out


def phase_engine(model, info, docs, lengths, positions: bool = False):
    from evalharness.perplexity.engine import PositionBuckets, passes_for_lengths, truncated_curve, truncated_nll
    from evalharness.scaling import current_spec

    spec = current_spec(model)
    out = {}
    for i, doc in enumerate(docs):
        for pass_length, served in passes_for_lengths(lengths, spec.is_dynamic, spec.original_ctx):
            nll = truncated_nll(model, doc, pass_length, info.bos_token_id)
            for length, score in truncated_curve(nll, served).items():
                out[f"{i}:{length}"] = score.nll_sum
                if positions:
                    buckets = PositionBuckets(max(1, spec.original_ctx // 8))
                    buckets.add(nll[: length - 1], first_position=1)
                    total = sum(row["nll_sum"] for row in buckets.rows())
                    assert abs(total - score.nll_sum) <= 1e-9 * abs(score.nll_sum), (total, score.nll_sum)
    return out


def phase_positions(model, info, docs, lengths):
    return phase_engine(model, info, docs, lengths, positions=True)


def phase_floor(model, info, docs, lengths):
    import torch

    from evalharness.perplexity.engine import decoder_hidden_states, with_bos

    device = model.get_output_embeddings().weight.device
    with torch.inference_mode():
        for doc in docs:
            ids = with_bos(doc, info.bos_token_id)[: max(lengths)][None].to(device)
            decoder_hidden_states(model, ids)
    return {}


PHASES = {"reference": phase_reference, "engine": phase_engine, "floor": phase_floor, "positions": phase_positions}


def count_decoder_forwards(model) -> list[int]:
    """A one-element list that counts calls of the model's decoder (backbone) from now on."""
    backbone = model.base_model if model.base_model is not model else model.get_decoder()
    count = [0]

    def hook(module, args, output):
        count[0] += 1

    backbone.register_forward_hook(hook)
    return count


def run_child(args) -> None:
    """Child-process mode: load, time one phase, print a JSON line."""
    import torch

    model, info, docs = load(args)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forwards = count_decoder_forwards(model)
    synchronize()
    start = time.perf_counter()
    values = PHASES[args.phase](model, info, docs, args.length_list)
    synchronize()
    seconds = time.perf_counter() - start
    result = {
        "phase": args.phase,
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_after_load_gb": rss_before / 2**20,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "values": values,
        "forwards": forwards[0],
        "info": {"layers": info.num_layers, "device": info.device, "dtype": info.dtype, "vocab": info.vocab_size},
        "flops": model_flops(model, max(args.length_list)) * len(docs),
        "estimated_peak_gb": estimated_peak(model, args) / 2**30,
    }
    print("BENCH " + json.dumps(result))


def estimated_peak(model, args) -> int:
    """evalharness.memory's estimate of the engine's peak at L_max (weights included; exact
    parameter count), bytes."""
    from evalharness.memory import estimate_peak_bytes

    n_params = sum(p.numel() for p in model.parameters())
    return estimate_peak_bytes(model.config, model.dtype, max(args.length_list), attn_impl=args.attn_impl,
                               n_params=n_params)["total"]


def model_flops(model, tokens: int) -> float:
    """2·N·T + 2·n_layers·T²·d_attn (see the module docstring)."""
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters()) - embedding
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        params += embedding  # tied head still costs its matmul
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    d_attn = config.num_attention_heads * head_dim
    return 2 * params * tokens + 2 * config.num_hidden_layers * tokens**2 * d_attn


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        run_child(args)
        return 0
    results = {}
    for phase in args.phases.split(","):
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--phase", phase]
        print(f"[bench] {phase} …", file=sys.stderr, flush=True)
        proc = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        line = next((row for row in proc.stdout.splitlines() if row.startswith("BENCH ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"[bench] {phase} failed: {' | '.join(tail)}", file=sys.stderr)
            results[phase] = None
            continue
        results[phase] = json.loads(line[len("BENCH "):])
    report(args, results)
    return 0


def report(args, results) -> None:
    memory_key = "peak_cuda_gb" if any(r and r["peak_cuda_gb"] for r in results.values()) else "peak_rss_gb"
    first = next((r for r in results.values() if r), None)
    if first is None:
        print("no phase finished")
        return
    print(f"\nmodel {args.model} ({first['info']['dtype']} on {first['info']['device']}), method {args.method}, "
          f"{args.docs} doc(s), lengths {args.length_list[0]}…{args.length_list[-1]} ({len(args.length_list)} lengths)")
    if args.model.startswith("random:"):
        print("(random weights: the perplexities are meaningless; time and memory are what this measures)")
    print(f"{'phase':<10}{'wall s':>10}{'peak GB':>10}{'forwards':>10}  ({memory_key})")
    for name, r in results.items():
        if r:
            print(f"{name:<10}{r['seconds']:>10.1f}{r[memory_key]:>10.2f}{r['forwards']:>10}")
        else:
            print(f"{name:<10}{'failed':>10}")
    ref, eng, flo = results.get("reference"), results.get("engine"), results.get("floor")
    if ref and eng:
        worst = max(abs(math.exp(ref["values"][k] / (int(k.split(':')[1]) - 1))
                        / math.exp(eng["values"][k] / (int(k.split(':')[1]) - 1)) - 1) for k in eng["values"])
        print(f"max relative ppl difference reference vs engine: {worst:.2e}  (must be ≤ 1e-4)")
        print(f"reference/engine time:   {ref['seconds'] / eng['seconds']:.2f}")
        print(f"reference/engine memory: {ref[memory_key] / eng[memory_key]:.2f}")
    if eng:
        print(f"engine peak estimated by evalharness.memory: {eng['estimated_peak_gb']:.2f} GB "
              f"(measured {eng[memory_key]:.2f}; on CPU the RSS also holds the libraries)")
    if eng and flo:
        print(f"engine/floor time:       {eng['seconds'] / flo['seconds']:.3f}")
    pos = results.get("positions")
    if eng and pos:
        same = pos["values"] == eng["values"] and pos["forwards"] == eng["forwards"]
        print(f"positions/engine time:   {pos['seconds'] / eng['seconds']:.3f}  (forwards {pos['forwards']} vs "
              f"{eng['forwards']}; nll sums {'identical' if same else 'DIFFER'})")
    if ref and flo:
        print(f"reference/floor time:    {ref['seconds'] / flo['seconds']:.2f}  (the ideal reference/engine)")
    if eng and eng["peak_cuda_gb"]:
        tokens = max(args.length_list) * args.docs
        mfu = eng["flops"] / eng["seconds"] / (args.peak_tflops * 1e12)
        print(f"engine: {tokens / eng['seconds']:.0f} tokens/s, MFU {100 * mfu:.1f}% of {args.peak_tflops:g} TFLOP/s")


if __name__ == "__main__":
    sys.exit(main())
