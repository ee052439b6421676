"""Small hand-made result tables with the exact schemas, shared by the figure and report tests
(and the `run_folder` fixture in conftest.py)."""
import json
import math

import pandas as pd

from evalharness.results import SCHEMAS

L = 128


LENGTHS = [64, 128, 256]


SERIES = [("base", 1.0), ("pi", 2.0), ("yarn", 2.0), ("dynamic-yarn", 1.0)]


def ppl_value(method, factor, length, dataset="d1"):
    """A distinct, recognisable perplexity per cell."""
    rank = [m for m, _ in SERIES].index(method) if method in [m for m, _ in SERIES] else 9
    return round(5.0 + rank + length / 64 + (0.5 if dataset == "d2" else 0.0), 4)


def ppl_row(method, factor, length, dataset="d1", protocol="truncated", stride=0, value=None, model="m"):
    value = ppl_value(method, factor, length, dataset) if value is None else value
    return dict(model=model, method=method, factor=factor, original_ctx=L, dataset=dataset, protocol=protocol,
                window_bos="every" if protocol == "sliding" else "first", context_length=length, stride=stride,
                n_docs=2, scored_tokens=2 * length, n_windows=2, ppl=value, ppl_paper=value + 0.25,
                ppl_ci_low=value - 0.5, ppl_ci_high=value + 0.5)


def perplexity_frame(datasets=(("d1", "truncated", 0),)):
    rows = [ppl_row(m, f, n, d, p, s) for d, p, s in datasets for m, f in SERIES for n in LENGTHS]
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


PASSKEY_DEPTHS = [0.0, 0.5, 1.0]


def passkey_correct(method, length, depth, trial):
    """Pattern: base fails past L; yarn fails only at the deepest needle of 256 on trial 0."""
    if method == "base":
        return length <= L and not (depth == 0.5 and trial == 2)
    return not (length == 256 and depth == 1.0 and trial == 0)


def passkey_frame():
    rows = []
    for method, factor in [("base", 1.0), ("yarn", 2.0)]:
        for length in LENGTHS:
            for depth in PASSKEY_DEPTHS:
                for trial in range(3):
                    rows.append(dict(model="m", method=method, factor=factor, original_ctx=L,
                                     context_length=length, prompt_tokens=length, depth=depth, trial=trial,
                                     seed=trial, passkey=12345 + trial, continuation=" 12345.",
                                     correct=passkey_correct(method, length, depth, trial)))
    return pd.DataFrame(rows, columns=SCHEMAS["passkey"])


LEADERBOARD = {  # (method, factor) → {task: value}
    ("base", 1.0): {"arc_challenge": 0.40, "hellaswag": 0.60, "mmlu": 0.30},
    ("pi", 2.0): {"arc_challenge": 0.35, "hellaswag": 0.55, "mmlu": 0.28},
    ("yarn", 2.0): {"arc_challenge": 0.41, "hellaswag": 0.58, "mmlu": 0.29},
}


METRICS = {"arc_challenge": ("acc_norm", 25), "hellaswag": ("acc_norm", 10), "mmlu": ("acc", 5)}


def leaderboard_frame():
    rows = []
    for (method, factor), scores in LEADERBOARD.items():
        for task, value in scores.items():
            metric, shots = METRICS[task]
            rows.append(dict(model="m", method=method, factor=factor, original_ctx=L, task=task,
                             metric=metric, value=value, stderr=0.01, num_fewshot=shots, n_samples=100))
    return pd.DataFrame(rows, columns=SCHEMAS["leaderboard"])


def leaderboard_subject_frame():
    """MMLU's macro row and two subjects (acc, n = 20 each) for Base and YaRN s=2 (0.1 higher)."""
    rows = []
    for method, factor, shift in (("base", 1, 0.0), ("yarn", 2, 0.1)):
        for task, value in (("mmlu_local", 0.4), ("mmlu_local_anatomy", 0.3), ("mmlu_local_virology", 0.6)):
            rows.append(dict(model="m", method=method, factor=factor, original_ctx=128, task=task, metric="acc",
                             value=value + shift, stderr=0.05, num_fewshot=5, n_samples=20))
    return pd.DataFrame(rows, columns=SCHEMAS["leaderboard"])


def write_manifest(folder):
    manifest = {
        "runs": [{"command": ["run_eval.py", "--model", "m", "--method", "base,pi,yarn"],
                  "args": {"model": "m"},
                  "environment": {"python": "3.11.0", "torch": "9.9.9", "transformers": "5.0.0"},
                  "model_info": {"name": "tiny-model", "native_ctx": L, "rope_theta": 10000.0},
                  "specs": ["base:original_ctx=128", "yarn:2:original_ctx=128"],
                  "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T01:00:00+00:00"}],
        "cells": {"perplexity|m|base|d1": {"status": "done"},
                  "passkey|m|pi|2": {"status": "failed",
                                     "error": "Traceback ...\nRuntimeError: out of memory"}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))




def sweep_frame():
    """Perplexity = 10 + 100·(x − x*(s))² at length 256 for s = 2, 4, with x* = 1.1 (s=2), 1.15 (s=4);
    other lengths hold noise that must be ignored."""
    rows = []
    optimum = {2.0: 1.1, 4.0: 1.15}
    for s, best in optimum.items():
        for x in [1.0, 1.05, 1.1, 1.15, 1.2, 1.25]:
            for length in (128, 256):
                value = 10 + 100 * (x - best) ** 2 if length == 256 else 50.0
                rows.append(ppl_row(f"yarn:attention_factor={x}", s, length, value=value))
        rows.append(ppl_row("yarn", s, 256, value=10 + 100 * (0.1 * math.log(s) + 1 - best) ** 2))
    rows.append(ppl_row("base", 1.0, 256, value=30.0))
    rows.append(ppl_row("pi", 2.0, 256, value=12.0))
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


def doc_row(doc_id, length, tokens, nll_sum, method="yarn", factor=2.0, window_nll_sum=None, model="m"):
    window_nll_sum = 3 * nll_sum / tokens if window_nll_sum is None else window_nll_sum
    return dict(model=model, method=method, factor=factor, original_ctx=64, dataset="d", doc_id=doc_id,
                doc_tokens=1000, protocol="sliding", window_bos="every", context_length=length, stride=16,
                scored_tokens=tokens, nll_sum=nll_sum, n_windows=3, window_nll_sum=window_nll_sum,
                ppl=math.exp(nll_sum / tokens), ppl_paper=math.exp(window_nll_sum / 3))


def passkey_rows(curves, depths=(0.5,), trials=10):
    """One row per prompt; `curves`: {(method, factor): {length: accuracy}} with accuracy·trials
    correct prompts (the first ones) per depth."""
    rows = []
    for (method, factor), curve in curves.items():
        for length, accuracy in curve.items():
            for depth in depths:
                for trial in range(trials):
                    rows.append(dict(model="m", method=method, factor=factor, original_ctx=4096,
                                     context_length=length, prompt_tokens=length - 2, depth=depth,
                                     trial=trial, seed=0, scoring="generate", passkey=12345, continuation="",
                                     correct=trial < round(accuracy * trials)))
    return pd.DataFrame(rows, columns=SCHEMAS["passkey"])
