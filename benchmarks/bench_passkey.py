#!/usr/bin/env python
"""Cost per prompt of the paper's passkey rule against one forward of the same prompt.

For each method × length, on `--prompts` passkey prompts (depths spread over [0, 1]), side by side:
  forward — one decoder forward over the prompt, no cache, the LM head on the last position only
            (what any scoring of the prompt costs at least);
  paper   — `passkey.score_prompt`: greedy decoding of ≤ 10 new tokens, first integer; static
            methods prefill once with the KV cache then take one-token steps; a dynamic method past
            its original context runs a full forward per step (the scale changes with the length),
            or with `--dynamic-cache rerotate` one-token steps on the re-rotated KV cache;
            stops once the first integer is complete;
  full10  — the same decode without the early stop (all 10 tokens unless EOS): the worst case,
            what a model that never answers with a number costs.
Printed: seconds per prompt, paper/forward and full10/forward, forwards and cached steps per prompt.
Random weights never answer with a number, so there paper = full10; a real model stops earlier.
Clock: this process's CPU time on a CPU device (a shared machine's load does not inflate it; set
OMP_NUM_THREADS to fix the thread count), wall time with a CUDA synchronize on a GPU.

    python benchmarks/bench_passkey.py --model random:tiny --lengths 1k,2k,4k
    python benchmarks/bench_passkey.py --model smollm2-135m --methods base,yarn:2,dynamic-yarn --lengths 4k
    python benchmarks/bench_passkey.py --methods dynamic-yarn --lengths 1k,4k --dynamic-cache recompute,rerotate
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None):
    from evalharness.options import parse_lengths

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--methods", default="base,yarn:2,dynamic-yarn")
    p.add_argument("--lengths", default="1k,2k,4k")
    p.add_argument("--prompts", type=int, default=3, help="prompts per method × length (depths spread over [0, 1])")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--attn-impl", default="sdpa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dynamic-cache", default="recompute",
                   help="comma list of recompute, rerotate: a row per mode for each dynamic method")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="auto: process CPU time on a CPU device, wall time on a GPU")
    args = p.parse_args(argv)
    args.length_list = parse_lengths(args.lengths)
    return args


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def timed(fn):
    synchronize()
    start = CLOCK()
    value = fn()
    synchronize()
    return CLOCK() - start, value


def one_forward(model, input_ids):
    """One decoder forward over the prompt (no cache) and the LM head on its last position."""
    import torch

    from evalharness.passkey import engine as PK

    with torch.inference_mode():
        hidden, _ = PK._decoder_last_hidden(model, input_ids.reshape(1, -1))
        return int(PK._logits_at(model, hidden).argmax(-1)[0])


def main(argv=None) -> None:
    import torch

    from evalharness import models
    from evalharness.passkey import engine as PK
    from evalharness.scaling import apply_scaling

    args = parse_args(argv)
    model, tokenizer, info = models.load(args.model, dtype=args.dtype, device=args.device, attn_impl=args.attn_impl)
    device = PK._device(model)
    global CLOCK
    cpu_clock = args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu")
    CLOCK = time.process_time if cpu_clock else time.perf_counter
    print(f"model {info.name} ({args.model}), device {device}, dtype {next(model.parameters()).dtype}, "
          f"torch threads {torch.get_num_threads()}, {args.prompts} prompts per row, "
          f"{'process CPU' if cpu_clock else 'wall'} seconds")
    depths = PK.depth_grid(args.prompts)
    header = (f"{'method':<24}{'length':>7}{'forward s':>11}{'paper s':>10}{'full10 s':>10}"
              f"{'paper/fwd':>11}{'full10/fwd':>12}{'forwards':>10}{'cached':>8}{'correct':>9}")
    print(header)
    print("-" * len(header))
    for length in args.length_list:
        prompts = [PK.build_prompt(tokenizer, length, d, seed=args.seed) for d in depths]
        for method, mode in [(m, c) for m in args.methods.split(",") for c in args.dynamic_cache.split(",")]:
            spec = apply_scaling(model, method)
            if mode != args.dynamic_cache.split(",")[0] and not spec.is_dynamic:
                continue  # the mode changes nothing for a static method: one row
            label = f"{spec.short} ({mode})" if spec.is_dynamic and "," in args.dynamic_cache else spec.short
            one_forward(model, prompts[0].input_ids)  # warm-up (allocator, kernels)
            forward, paper, full, forwards, cached, correct = [], [], [], [], [], 0
            for prompt in prompts:
                forward.append(timed(lambda: one_forward(model, prompt.input_ids))[0])
                seconds, score = timed(lambda: PK.score_prompt(model, tokenizer, prompt, dynamic_cache=mode))
                paper.append(seconds)
                forwards.append(score.forwards)
                cached.append(score.cached_steps)
                correct += score.correct
                full.append(timed(lambda: PK.greedy_decode(model, tokenizer, prompt.input_ids,
                                                           stop_when_decided=False, dynamic_cache=mode))[0])
            f, p, g = statistics.mean(forward), statistics.mean(paper), statistics.mean(full)
            print(f"{label:<24}{length:>7}{f:>11.4f}{p:>10.4f}{g:>10.4f}{p / f:>11.2f}{g / f:>12.2f}"
                  f"{statistics.mean(forwards):>10.1f}{statistics.mean(cached):>8.1f}{correct:>6}/{len(prompts)}")
    apply_scaling(model, "base")


if __name__ == "__main__":
    main()
