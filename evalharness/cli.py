"""Command line: arguments → run plan → tasks → tables. Subcommands (argparse) in `COMMANDS`; a
first argument that is not a command name means `eval`:

    python run_eval.py --model smollm2-135m --method base,pi,ntk,yarn --factor 2 \\
        --tasks perplexity --dataset coq-stdlib --lengths 2k:16k:2k --docs 2 --out results/run1
    python run_eval.py methods --model smollm2-135m --method yarn --factor 2
    python run_eval.py plot results/run1
    python run_eval.py compare results/run1      # next to the paper's published numbers
    python run_eval.py effective-context results/ppl results/passkey   # effective context per method

Exit codes: 0 all cells done; 1 some cells failed (recorded in manifest.json, the rest ran);
2 bad input (one sentence on stderr, nothing computed); 3 a result file could not be written
(disk full; the rows written before are intact); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from .errors import EvalHarnessError, UsageError
from .options import (
    DEFAULT_PREFILL_CHUNK,
    PREFILL_AUTO,
    bounded_count,
    finite_number,
    parse_factors,
    parse_grid,
    parse_lengths,
    parse_prefill_chunk,
    positive_count,
)
from .runner import TASKS
from .taskfiles import apply_task_file, task_names

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_WRITE_FAILED = 3
DEFAULT_TEMPERATURES = "1.0:1.4:0.05"
DEFAULT_STRIDE = 256


class Parser(argparse.ArgumentParser):
    """argparse whose errors are the harness's: one sentence (UsageError, exit 2), no usage dump."""

    def error(self, message: str):
        raise UsageError(one_sentence(message))


def one_sentence(message: str) -> str:
    """argparse's error `message` as one sentence naming the option and what is valid."""
    import re

    match = re.fullmatch(r"argument ([^:]+): (.*)", message, flags=re.S)
    if not match:
        return message.rstrip(".") + "; see run_eval.py --help."
    flag, text = match.group(1).split("/")[-1], match.group(2)
    if text.startswith(flag):  # our own type functions write the whole sentence
        return text
    invalid = re.fullmatch(r"invalid (\w+) value: (.*)", text)
    if invalid:
        kind = {"int": "a whole number", "float": "a number"}.get(invalid.group(1), "valid")
        return f"{flag} {invalid.group(2)} is not {kind}."
    choice = re.fullmatch(r"invalid choice: (.*?) \(choose from (.*)\)", text)
    if choice:
        return f"{flag} {choice.group(1)} is not valid; choose from {choice.group(2)}."
    if text.startswith("expected one argument"):
        return f"{flag} needs a value."
    return f"{flag}: {text.rstrip('.')}."


class StoreGiven(argparse.Action):
    """Store the value and note that the option was given on the command line (`<dest>_given`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


# ---------------------------------------------------------------------------------------------
# Parsing helpers (pure)
# ---------------------------------------------------------------------------------------------

def build_specs(methods: str, factors: str, original_ctx: int | None) -> list:
    """The method × factor grid as ScalingSpecs (methods that ignore the factor appear once).
    A method written with its own factor (`yarn:16`) keeps it."""
    from .methods import ScalingSpec

    specs, seen = [], set()
    defaults = {"original_ctx": original_ctx} if original_ctx else {}
    for method in [m.strip() for m in methods.split(",") if m.strip()]:
        has_own_factor = len(method.split(":")) > 1 and "=" not in method.split(":")[1]
        for factor in [None] if has_own_factor else parse_factors(factors):
            spec = ScalingSpec.parse(method, **defaults) if factor is None else ScalingSpec.parse(
                method, factor=factor, **defaults)
            if spec not in seen:
                seen.add(spec)
                specs.append(spec)
    if not specs:
        raise UsageError("--method names no method.")
    return specs


# ---------------------------------------------------------------------------------------------
# Argument parsers
# ---------------------------------------------------------------------------------------------

def parse_limit(text: str) -> int | dict[str, int]:
    """`--limit`: one count for every task (`100`) or one per task (`arc_challenge=100,mmlu=2`)."""
    def count(value: str) -> int:
        return positive_count(value, f"--limit {text!r}: {value!r} is not a count ≥ 1 "
                                     "(give N or TASK=N,TASK=N).")
    if "=" not in text:
        return count(text)
    limits = {}
    for part in text.split(","):
        task, _, value = part.partition("=")
        if not task.strip():
            raise argparse.ArgumentTypeError(f"--limit {text!r}: {part!r} names no task (give TASK=N).")
        limits[task.strip()] = count(value.strip())
    return limits


def parse_window(text: str) -> int | str:
    """`--sliding-window-attention`: `off` or a token count (`4096`, `4k`)."""
    if str(text).strip().lower() == "off":
        return "off"
    return positive_count(text, f"--sliding-window-attention {text!r} is not valid; give a size ≥ 1 "
                                "(e.g. 4096 or 4k) or off.")


def sliding_window_setup(model, option, lengths: list[int], tasks: list[str]) -> dict:
    """Apply `--sliding-window-attention` before the first forward; warn (one line) when a length
    exceeds the model's window and the option was not given. Returns the manifest entry."""
    from .models import set_sliding_window, sliding_window

    configured = sliding_window(model)
    if option is not None:
        set_sliding_window(model, None if option == "off" else option)
    elif configured and {"perplexity", "passkey", "temperature-sweep"} & set(tasks) and max(lengths) > configured:
        print(f"warning: lengths up to {max(lengths)} exceed the model's sliding attention window {configured}; "
              "tokens further back are not attended (--sliding-window-attention off for full attention).",
              file=sys.stderr)
    return {"config": configured, "option": option, "applied": sliding_window(model)}


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2-135m",
                   help="hub id, local folder, .gguf file, smollm2-135m (bundled GGUF), gemma3-270m (after `bash "
                        "scripts/bootstrap.sh gemma`) or random:NAME (tiny, "
                        "llama2-7b, ...)")
    g.add_argument("--dtype", default="auto", help="auto (cuda→bf16, cpu→fp32), float32, bfloat16, float16")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--attn-impl", default=None, help="attention implementation: sdpa, eager, flash_attention_2")
    g.add_argument("--device-map", default=None, help="accelerate device map for models larger than one GPU (auto)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    g.add_argument("--allow-pickle-weights", action="store_true",
                   help="also load .bin checkpoints (torch.load(weights_only=True)); off: safetensors only")
    g.add_argument("--sliding-window-attention", type=parse_window, default=None, metavar="N|off",
                   help="sliding-window attention size for configs with sliding_window (Mistral, Qwen2), or off "
                        "(full attention); default: the config's")
    g = p.add_argument_group("scaling")
    g.add_argument("--method", default="base,yarn",
                   help="comma list of methods: base, pi (linear), ntk, ntk-by-parts, yarn, dynamic-pi, dynamic-ntk, "
                        "dynamic-yarn, native (the RoPE the model ships with); options as method:factor:key=value "
                        "(e.g. yarn:16:truncate=false)")
    g.add_argument("--dynamic-cache", choices=("recompute", "rerotate"), default="recompute",
                   help="greedy generation with a dynamic method past L (passkey, RULER): a full forward per token, "
                        "exactly what cache-free generate computes (recompute), or the KV cache with its keys "
                        "re-rotated to the current scale, the YaRN paper's advice for dynamic scaling (rerotate: "
                        "one prefill + one token per step)")
    g.add_argument("--factor", default="2", help="comma list of scale factors s (grid with --method)")
    g.add_argument("--original-ctx", type=bounded_count("--original-ctx"), default=None,
                   help="pre-trained context L (default: the config's original_max_position_embeddings, "
                        "else max_position_embeddings)")
    g = p.add_argument_group("tasks")
    g.add_argument("--task", default=None, metavar="NAME|FILE.yaml",
                   help="a task file: its fields set the options below (a flag given on the command line wins); "
                        f"a name under tasks/ ({', '.join(task_names())}) or the path of a .yaml file")
    g.add_argument("--tasks", default="perplexity", help=f"comma list of {', '.join(TASKS)}")
    g.add_argument("--dataset", default="coq-stdlib",
                   help="govreport, proofpile, pg19 (HF datasets; NAME=DIR reads a local copy in the hub layout), "
                        "hf:OWNER/NAME[:SPLIT] or hf:OWNER/NAME:CONFIG:SPLIT (any HF dataset, split test unless "
                        "given), coq-stdlib, debian-policy (offline), local:PATH")
    g.add_argument("--text-field", default=None,
                   help="text column of .jsonl/.parquet files and hub datasets (default: a stored input_ids column, "
                        "else text; govreport: input or report)")
    g.add_argument("--lengths", default="2k:8k:2k", help="context lengths: start:stop:step or comma list; k = 1024")
    g.add_argument("--protocol", choices=("truncated", "sliding"), default="truncated",
                   help="perplexity protocol: first L tokens per doc, or sliding window L with --stride")
    g.add_argument("--stride", type=bounded_count("--stride"), default=None,
                   help="sliding-window stride S (default 256)")
    g.add_argument("--window-bos", choices=("every", "first"), default=None,
                   help="sliding: BOS + L−1 document tokens in every window (the authors' algorithm, default) "
                        "or BOS only at the document start (the transformers perplexity recipe)")
    g.add_argument("--position-bucket", type=bounded_count("--position-bucket"), default=None,
                   help="width in tokens of the loss-by-position buckets (default: original context L / 8)")
    g.add_argument("--docs", type=bounded_count("--docs"), default=None,
                   help="first N documents after the length filter (paper)")
    g.add_argument("--sample", type=bounded_count("--sample"), default=None,
                   help="instead: a seeded random sample of N documents")
    g.add_argument("--min-tokens", type=bounded_count("--min-tokens", 0), default=None,
                   help="keep documents with at least this many tokens (default: the largest length for truncated)")
    g.add_argument("--seed", type=bounded_count("--seed", 0), default=0, action=StoreGiven,
                   help="seed of every random choice (samples, bootstrap, passkeys); leaderboard: lm-eval's own "
                        "seeds (0, 1234, 1234, 1234) unless --seed is given, which then sets all four")
    g.add_argument("--temperatures", default=None,
                   help="temperature-sweep: grid of YaRN attention factors sqrt(1/t), start:stop:step or list "
                        f"(default {DEFAULT_TEMPERATURES})")
    g.add_argument("--chunk-size", type=bounded_count("--chunk-size"), default=None,
                   help="positions per LM-head chunk (default: 256 MB of logits)")
    g.add_argument("--prefill-chunk", type=parse_prefill_chunk, default=PREFILL_AUTO, metavar="N|auto|off",
                   help="perplexity and passkey: run each forward in chunks of N tokens through the model's KV cache "
                        "(memory bounded by the chunk; sliding-window layers cost T·(N + window)); auto (default): "
                        f"chunks of {DEFAULT_PREFILL_CHUNK} only when the one-shot forward's estimated peak exceeds "
                        "the device's memory; off: always one forward per window. Same numbers up to rounding")
    g = p.add_argument_group("passkey")
    g.add_argument("--depths", type=bounded_count("--depths"), default=10,
                   help="needle depths, evenly spaced in [0, 1] (--lengths are the prompt lengths)")
    g.add_argument("--trials", type=bounded_count("--trials"), default=1,
                   help="trials (keys) per (length, depth)")
    g = p.add_argument_group("leaderboard (lm-eval)")
    g.add_argument("--leaderboard-tasks", default="arc_challenge,hellaswag,mmlu,truthfulqa_mc2",
                   help="lm-eval task names, shipped offline mirrors (tasks/), or task YAML paths")
    g.add_argument("--leaderboard-data", default=None,
                   help="folder with local copies (DIR/arc_challenge, hellaswag, mmlu, truthfulqa): run the mirrors")
    g.add_argument("--limit", type=parse_limit, default=None,
                   help="examples per lm-eval task (MMLU: per subject): N, or per task, e.g. arc_challenge=100,mmlu=2")
    g.add_argument("--batch-size", type=bounded_count("--batch-size"), default=1)
    g.add_argument("--max-length", type=bounded_count("--max-length"), default=None,
                   help="lm-eval max_length (default: factor × original context for static methods, else L)")
    g.add_argument("--save-samples", action="store_true", help="keep lm-eval's per-example log-likelihoods")
    g = p.add_argument_group("ruler (lm-eval)")
    g.add_argument("--ruler-tasks", default="ruler",
                   help="ruler (the offline tasks) or a comma list of lm-eval RULER task names, e.g. niah_single_1,vt")
    g.add_argument("--ruler-samples", type=bounded_count("--ruler-samples"), default=10,
                   help="samples per (method, task, length) cell")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="run folder (default results/<timestamp>); rerun into it to resume")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--no-plots", action="store_true", help="skip figures and report.md at the end of the run")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells, tokens, done vs to do in --out, peak-memory estimate) and stop")
    add_effective_context_arguments(p)
    add_reference_argument(p)


def add_reference_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default=None, metavar="SPECS",
                   help="report.md: also compare every method with these series, paired on the same "
                        "documents and prompts (--method syntax, comma-separated, e.g. ntk:2,yarn:2); "
                        "base is always a reference")


def parse_references(text: str | None) -> tuple[str, ...]:
    """`--reference` → the reference series (`tables.parse_reference` syntax); UsageError naming a bad one."""
    from .methods import canonical_method
    from .tables import parse_reference

    references = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    for reference in references:
        try:
            canonical_method(parse_reference(reference)[0].split(":")[0])
        except ValueError as exc:
            raise UsageError(f"--reference: {exc}") from None
    return references


def add_effective_context_arguments(p: argparse.ArgumentParser) -> None:
    """The thresholds of the effective-context table (report.md and `effective-context`)."""
    g = p.add_argument_group("effective context (tables.effective_context)")
    g.add_argument("--ppl-tolerance", type=finite_number("--ppl-tolerance"), default=None,
                   help="perplexity rule: ppl(l) <= (1 + tolerance) * best ppl at lengths <= L "
                        "(default 0.10)")
    g.add_argument("--passkey-threshold", type=finite_number("--passkey-threshold"), default=None,
                   help="passkey rule: accuracy >= threshold (default 0.8)")
    g.add_argument("--ruler-fraction", type=finite_number("--ruler-fraction"), default=None,
                   help="RULER rule: mean score >= fraction * base's mean at the longest length <= L/2 "
                        "(default 0.85)")
    g.add_argument("--ruler-threshold", type=finite_number("--ruler-threshold"), default=None,
                   help="RULER rule with an absolute threshold on the mean score instead (0-1)")


def effective_context_rules(args: argparse.Namespace):
    """`tables.EffectiveContextRules` from the options of `add_effective_context_arguments`;
    UsageError (one sentence) for a value outside its range."""
    import math

    from .tables import EffectiveContextRules

    defaults = EffectiveContextRules()
    checks = [("--ppl-tolerance", args.ppl_tolerance, lambda v: 0 <= v < math.inf,
               "a number >= 0 (0.10 = 10 %)"),
              ("--passkey-threshold", args.passkey_threshold, lambda v: 0 < v <= 1, "in (0, 1]"),
              ("--ruler-fraction", args.ruler_fraction, lambda v: 0 < v < math.inf, "a number > 0"),
              ("--ruler-threshold", args.ruler_threshold, lambda v: 0 < v <= 1, "in (0, 1]")]
    for flag, value, valid, text in checks:
        if value is not None and not valid(value):
            raise UsageError(f"{flag} {value:g} is out of range; give {text}.")
    if args.ruler_fraction is not None and args.ruler_threshold is not None:
        raise UsageError("--ruler-fraction (relative to base) and --ruler-threshold (absolute) exclude each "
                         "other; give one.")
    return EffectiveContextRules(
        ppl_tolerance=defaults.ppl_tolerance if args.ppl_tolerance is None else args.ppl_tolerance,
        passkey_threshold=(defaults.passkey_threshold if args.passkey_threshold is None
                           else args.passkey_threshold),
        ruler_fraction=defaults.ruler_fraction if args.ruler_fraction is None else args.ruler_fraction,
        ruler_threshold=args.ruler_threshold)


def add_methods_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="read |D|, rope base and L from this model (else give them)")
    p.add_argument("--method", default="base,pi,ntk,ntk-by-parts,yarn,dynamic-pi,dynamic-ntk,dynamic-yarn")
    p.add_argument("--factor", default="2")
    p.add_argument("--original-ctx", type=bounded_count("--original-ctx"), default=None)
    p.add_argument("--rotary-dim", type=bounded_count("--rotary-dim"), default=None)
    p.add_argument("--rope-theta", type=finite_number("--rope-theta"), default=None)
    p.add_argument("--seq-len", type=bounded_count("--seq-len"), default=None,
                   help="sequence length for dynamic methods")


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("--no-report", action="store_true", help="figures only")
    add_effective_context_arguments(p)
    add_reference_argument(p)


def add_effective_context_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders; series are matched across them by model, method, factor, original_ctx")
    p.add_argument("--csv", default=None, help="also write the table (one row per series and criterion) to "
                                               "this CSV file")
    add_effective_context_arguments(p)


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--model", default=None, help="compare as this published model (default: the run's model name)")
    p.add_argument("--csv", default=None, help="also write the comparison to this CSV file")


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import describe

    rotary_dim, theta, native = args.rotary_dim, args.rope_theta, args.original_ctx
    model = None
    if args.model:
        from . import models
        from .scaling import layer_rope_bases

        model, _, info = models.load(args.model, dtype="float32", device="cpu", weights=False)
        rotary_dim, theta, native = rotary_dim or info.rotary_dim, theta or info.rope_theta, native or info.native_ctx
        bases = layer_rope_bases(model.config)
        thetas = ", ".join(f"{t} {b:g}" for t, b in bases.items()) if bases else f"{info.rope_theta:g}"
        print(f"{info.name}: {info.architecture}, |D|={info.rotary_dim}, rope_theta={thetas}, "
              f"native context {info.native_ctx}" + ("; the table is for the full-attention layers "
                                                     "(--rope-theta for another base)" if bases else ""))
    if not (rotary_dim and theta and native):
        raise UsageError("methods needs --model, or all of --rotary-dim, --rope-theta and --original-ctx.")
    specs = build_specs(args.method, args.factor, native)
    if model is not None:
        from .runner import resolve_specs

        specs = resolve_specs(model, specs)  # `native`: the RoPE the model ships
    elif any(spec.method == "native" for spec in specs):
        raise UsageError("--method native is the RoPE a model ships with; give --model to show it.")
    seq_len = args.seq_len or 2 * native
    header = (f"{'spec':<16}{'s':>7}{'ramp':>10}{'inv_freq[0]':>13}{'inv_freq[-1]':>14}{'max λ':>12}"
              f"{'interp.':>9}{'attn':>8}")
    print(f"|D|={rotary_dim}, b={theta:g}, L={native}; dynamic methods shown at l={seq_len}")
    print(header)
    for spec in specs:
        shipped = shipped_frequencies(model) if spec.method == "native" else None
        row = describe(spec, rotary_dim, theta, seq_len if spec.is_dynamic else None, frequencies=shipped)
        ramp = "-" if row["ramp_low"] is None else f"{_num(row['ramp_low'])}/{_num(row['ramp_high'])}"
        print(f"{spec.short:<16}{row['scale']:>7.3g}{ramp:>10}{row['inv_freq_first']:>13.6g}{row['inv_freq_last']:>14.6g}"
              f"{row['max_wavelength']:>12.6g}{row['pairs_interpolated']:>9}{row['attention_scale']:>8.4f}")
    print(METHODS_LEGEND.format(pairs=rotary_dim // 2))
    return EXIT_OK


METHODS_LEGEND = """
s             scale factor (dynamic methods: max(1, l/L) at the length l above)
ramp          NTK-by-parts / YaRN ramp bounds as dimension-pair indices: pairs below the first keep their
              frequency, pairs above the second are interpolated fully (θ/s), the ramp blends between; - = none
inv_freq[0]   the highest frequency θ_0 (radians per token)
inv_freq[-1]  the lowest frequency θ_(|D|/2-1)
max λ         the longest wavelength 2π/θ_(|D|/2-1), in tokens
interp.       how many of the {pairs} dimension pairs are interpolated fully (θ/s)
attn          attention scale √(1/t) applied to the logits (YaRN: 0.1·ln(s)+1; 1 = none)"""


def shipped_frequencies(model):
    """(inv_freq float32, attention scale) of the model's first rotary module as loaded: what
    `--method native` runs."""
    from .scaling import rotary_modules

    _, _, module = rotary_modules(model)[0]
    # one module per layer type keeps `<type>_inv_freq`: the table shows the full-attention layers
    prefix = "" if hasattr(module, "inv_freq") else "full_attention_"
    if getattr(module, f"{prefix}inv_freq").is_meta:  # a weightless model: the library rebuilds its buffers
        module = type(module)(config=module.config)
    return (getattr(module, f"{prefix}inv_freq").detach().float().cpu(),
            float(getattr(module, f"{prefix}attention_scaling", 1.0)))


def _num(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) and not float(value).is_integer() else str(int(value))


def given_report_options(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict]:
    """The report options this command line gives (checked): `--reference` (None when absent) and
    the effective-context options given, by name; what is not given is read from the folder."""
    from .report import RULE_FIELDS

    effective_context_rules(args)  # checks the values
    references = parse_references(args.reference) if args.reference is not None else None
    return references, {name: getattr(args, name) for name in RULE_FIELDS if getattr(args, name) is not None}


def cmd_plot(args: argparse.Namespace) -> int:
    from .report import record_options

    references, rules = given_report_options(args)
    for folder in map(Path, args.results_dirs):
        if not folder.is_dir():
            raise UsageError(f"results folder {str(folder)!r} does not exist; give a run's --out folder.")
        if not any(folder.glob("*.csv")):
            raise UsageError(f"results folder {str(folder)!r} holds no result table (*.csv) to plot.")
        if not args.no_report:
            record_options(folder, references, rules)
        for path in write_figures_and_report(folder, report=not args.no_report):
            print(path)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """`compare RUN_DIR`: the run's numbers next to the paper's published ones (evalharness.paper)."""
    from .paper import DIFFERS_NOTE, compare_run, format_comparison

    check_csv_destination(args.csv)
    table = compare_run(args.run_dir, args.model)  # its CompareError is an EvalHarnessError: exit 2
    print(format_comparison(table))
    print(DIFFERS_NOTE)
    if args.csv:
        table.to_csv(args.csv, index=False)
    return EXIT_OK


def check_csv_destination(path: str | None) -> None:
    """`--csv FILE`: FILE's folder exists and is writable and FILE is no folder (checked before the work)."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"--csv {path!r}: the folder {str(folder)!r} {state}; give a file in an existing folder.")
    if Path(path).is_dir():
        raise UsageError(f"--csv {path!r} is a folder; give a file name.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--csv {path!r}: the folder {str(folder)!r} is not writable; give a file in a folder "
                         "you can write.")


def check_run_folder_given(folder: Path) -> None:
    """A folder named on the command line is a run folder: a manifest.json or a result table."""
    from .results import SCHEMAS

    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"run folder {str(folder)!r} {state}; give a run's --out folder.")
    if not (folder / "manifest.json").exists() and not any((folder / f"{t}.csv").exists()
                                                           for t in [*SCHEMAS, "ruler"]):
        raise UsageError(f"{str(folder)!r} is not a run folder (no manifest.json and no result table); "
                         "give a run's --out folder.")


def cmd_effective_context(args: argparse.Namespace) -> int:
    """`effective-context RUN_DIR...`: the effective context of every series by perplexity, passkey and
    RULER, from the tables of all the folders together, as a markdown table."""
    rules = effective_context_rules(args)
    folders = [Path(folder) for folder in args.run_dirs]
    for folder in folders:
        check_run_folder_given(folder)
    check_csv_destination(args.csv)
    from .report import effective_context_lines
    from .tables import effective_context, load_effective_context_tables

    tables = load_effective_context_tables(folders)
    if all(frame.empty for frame in tables.values()):
        raise UsageError(f"{', '.join(str(f) for f in folders)}: no perplexity, passkey or ruler table, so "
                         "there is no effective context to compute; give the run folders of those tasks.")
    table = effective_context(tables["perplexity"], tables["passkey"], tables["ruler"], rules)
    print("\n".join(effective_context_lines(table, rules)).rstrip())
    if args.csv:
        table.to_csv(args.csv, index=False)
    return EXIT_OK


def write_figures_and_report(folder: Path, report: bool = True) -> list[Path]:
    """Figures, then report.md with the report options recorded in the folder
    (`report.record_options`)."""
    from . import plots
    from .report import write_report

    paths = plots.plot_run(folder)
    if report:
        paths.append(write_report(folder, figures=False))
    return paths


def shown_path(path: str) -> str:
    """A path as a manifest records it: relative to the working folder when it lies inside it, so
    a committed run folder names no absolute path of the machine that ran it."""
    try:
        inside = os.path.isabs(path) and Path(path).resolve().is_relative_to(Path.cwd())
        return os.path.relpath(path) if inside else path
    except ValueError:
        return path


def recorded_command(argv: list[str], out: str) -> list[str]:
    """`argv` with the script by its name and the `--out` folder as `shown_path` gives it."""
    words = [Path(argv[0]).name if argv and Path(argv[0]).name == "run_eval.py" else argv[0], *argv[1:]] if argv else []
    result = []
    for i, word in enumerate(words):
        if word == out and i > 0 and words[i - 1] in ("--out",):
            word = shown_path(word)
        elif word.startswith("--out=") and word[len("--out="):] == out:
            word = "--out=" + shown_path(out)
        result.append(word)
    return result


@dataclass
class RunContext:
    args: argparse.Namespace
    out: Path
    tasks: list[str]
    lengths: list[int]


def plan_run(args: argparse.Namespace) -> RunContext:
    """Validate everything that can be validated before loading anything heavy."""
    tasks = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    if not tasks:
        raise UsageError(f"--tasks {args.tasks!r} names no task; valid tasks: {', '.join(TASKS)}.")
    for task in tasks:
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}.")
    lengths = parse_lengths(args.lengths)
    build_specs(args.method, args.factor, args.original_ctx)  # raises on bad methods / factors
    parse_references(args.reference)
    effective_context_rules(args)
    if args.text_field is not None and not args.text_field.strip():
        raise UsageError(f"--text-field {args.text_field!r} is empty; give a column name (e.g. text) or leave it out.")
    if args.leaderboard_data is not None and not Path(args.leaderboard_data).is_dir():
        raise UsageError(f"--leaderboard-data {args.leaderboard_data!r} is not a folder; give the folder that holds "
                         "the local copies (DIR/arc_challenge, hellaswag, mmlu, truthfulqa).")
    from .models import check_attn_impl

    check_attn_impl(args.attn_impl)
    if args.docs is not None and args.docs <= 0:
        raise UsageError(f"--docs {args.docs} must be ≥ 1.")
    if args.sample is not None and args.sample <= 0:
        raise UsageError(f"--sample {args.sample} must be ≥ 1.")
    if args.docs is not None and args.sample is not None:
        raise UsageError("--docs (first N documents) and --sample (random N documents) exclude each other; give one.")
    check_conflicts(args, tasks)
    if "temperature-sweep" in tasks:
        args.temperatures = args.temperatures or DEFAULT_TEMPERATURES
        if any(v <= 0 for v in parse_grid(args.temperatures)):
            raise UsageError(f"--temperatures {args.temperatures!r}: attention factors must be > 0.")
    if args.protocol == "sliding":
        args.stride = DEFAULT_STRIDE if args.stride is None else args.stride
        if args.stride <= 0:
            raise UsageError(f"--stride {args.stride} must be ≥ 1.")
        if args.stride > min(lengths):
            raise UsageError(f"--stride {args.stride} is larger than the smallest window {min(lengths)}: "
                             "tokens would go unscored.")
        args.window_bos = args.window_bos or "every"
        if args.window_bos == "every" and args.stride > min(lengths) - 1:
            raise UsageError(f"--stride {args.stride} is larger than the {min(lengths) - 1} document tokens the "
                             f"smallest window {min(lengths)} holds besides its BOS (--window-bos every): "
                             "tokens would go unscored.")
    else:
        args.window_bos = "first"  # truncated: one window per document, BOS at its start
    if args.position_bucket is not None and args.position_bucket <= 0:
        raise UsageError(f"--position-bucket {args.position_bucket} must be ≥ 1 token.")
    if args.original_ctx is not None and args.original_ctx <= 0:
        raise UsageError(f"--original-ctx {args.original_ctx} must be ≥ 1.")
    if "leaderboard" in tasks:
        from .leaderboard import check_task_names

        check_task_names(args.leaderboard_tasks.split(","), args.leaderboard_data)
    if "ruler" in tasks:
        from .ruler import MAX_GEN_TOKENS, resolve_tasks

        resolve_tasks(args.ruler_tasks)
        if args.ruler_samples <= 0:
            raise UsageError(f"--ruler-samples {args.ruler_samples} must be ≥ 1.")
        if min(lengths) <= MAX_GEN_TOKENS:
            raise UsageError(f"RULER length {min(lengths)} is not longer than the {MAX_GEN_TOKENS} tokens every "
                             "RULER task generates; give --lengths that leave room for the prompt (≥ 1k).")
    if args.depths <= 0 or args.trials <= 0:
        raise UsageError(f"--depths {args.depths} and --trials {args.trials} must be ≥ 1.")
    if isinstance(args.limit, dict):
        unknown = sorted(set(args.limit) - set(args.leaderboard_tasks.split(",")))
        if unknown:
            raise UsageError(f"--limit names {', '.join(unknown)}, which is not in --leaderboard-tasks "
                             f"({args.leaderboard_tasks}).")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size {args.batch_size} must be ≥ 1.")
    out = Path(args.out) if args.out else Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if not args.dry_run:
        check_output_folder(out)
    elif out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder (new, or an earlier run's to resume).")
    from .results import check_run_folder

    check_run_folder(out)  # unrepairable tables stop here; repairable ones are announced
    return RunContext(args, out, tasks, lengths)


# Kernel file systems: writable by root, but no place for results.
PSEUDO_FILE_SYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_output_folder(out: Path) -> None:
    """`--out`: a folder that exists or can be created, that this process can write, and not inside
    /proc, /sys or /dev; UsageError (one sentence) otherwise. Creates nothing."""
    resolved = out.expanduser().resolve()
    if any(resolved == p or p in resolved.parents for p in PSEUDO_FILE_SYSTEMS):
        kernel = ", ".join(map(str, PSEUDO_FILE_SYSTEMS))
        raise UsageError(f"--out {str(out)!r} is inside a kernel file system ({kernel}); give a folder on disk.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder (new, or an earlier run's to resume).")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {str(out)!r} cannot be created: {str(existing)!r} is a file; give a folder path "
                         "whose parents are folders.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r}: {str(existing)!r} is not writable; give a folder you can write.")


def load_documents(args: argparse.Namespace, lengths: list[int], tokenizer, bos: int | None,
                   vocab_size: int | None = None) -> list:
    """The corpus documents a perplexity-type task reads (`--dataset` and its selection options)."""
    from . import corpora

    min_tokens = args.min_tokens
    if min_tokens is None:
        min_tokens = corpora.default_min_tokens(args.protocol, lengths, bos is not None)
    docs = corpora.load_corpus(args.dataset, tokenizer, min_tokens=min_tokens, n_docs=args.docs,
                               sample=args.sample, seed=args.seed, text_field=args.text_field)
    if vocab_size is not None:  # stored input_ids made for another tokenizer
        corpora.check_token_ids(docs, vocab_size, args.dataset)
    if args.protocol == "truncated":
        shortest = min(d.ids.numel() for d in docs) + (bos is not None)
        if shortest < max(lengths):
            raise UsageError(f"length {max(lengths)} is longer than a selected document ({shortest} "
                             "tokens with BOS); lower --lengths or raise --min-tokens.")
    return docs


def check_conflicts(args: argparse.Namespace, tasks: list[str]) -> None:
    """Flags that only mean something for a task or protocol that is not asked for."""
    rules = [
        (args.stride is not None and args.protocol != "sliding", "--stride", "--protocol sliding"),
        (args.window_bos is not None and args.protocol != "sliding", "--window-bos", "--protocol sliding"),
        (args.temperatures is not None and "temperature-sweep" not in tasks, "--temperatures",
         "--tasks temperature-sweep"),
        (args.device_map is not None and args.device not in ("auto", None), "--device-map", "--device auto"),
    ]
    for conflict, flag, needs in rules:
        if conflict:
            raise UsageError(f"{flag} only applies with {needs}; drop it or add that.")


def check_passkey_lengths(tokenizer, lengths: list[int], seed: int) -> None:
    """The shortest passkey prompt must hold the fixed text (intro, needle, question)."""
    from .passkey import PasskeyError, build_prompt

    try:
        build_prompt(tokenizer, min(lengths), 0.5, seed=seed)
    except PasskeyError as exc:
        raise UsageError(f"passkey --lengths: {exc}") from None


def check_specs_against_lengths(specs, lengths: list[int]) -> None:
    """A dynamic method asked only at lengths ≤ L equals base there: nothing to measure."""
    for spec in specs:
        if spec.is_dynamic and max(lengths) <= spec.original_ctx:
            raise UsageError(
                f"{spec.short} equals base at every length asked (all ≤ its original context {spec.original_ctx}); "
                f"ask for lengths above {spec.original_ctx} or lower --original-ctx.")


def memory_estimate(model, dtype, chunk_size: int | None, prefill_chunk: int | str | None = None,
                    device: str = "cpu"):
    """(`cell → estimated peak bytes`, `cell → its prefill plan`): `prefill.plan_prefill` at the
    cell's longest forward, the one-shot or chunked plan the engine will choose; None / `?` for a
    cell that does not know its length."""
    from .options import PREFILL_OFF
    from .prefill import plan_prefill

    n_params = sum(p.numel() for p in model.parameters())
    attn_impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    option = PREFILL_OFF if prefill_chunk is None else prefill_chunk

    def plan(cell):
        # RULER runs through lm-eval's generate: one-shot whatever the option
        cell_option = option if cell.task in ("perplexity", "temperature-sweep", "passkey") else PREFILL_OFF
        return plan_prefill(model.config, dtype, device, cell_option, cell.length, chunk_size=chunk_size,
                            attn_impl=attn_impl, n_params=n_params, kv_cache=cell.kv_cache)

    def estimate(cell) -> float | None:
        return plan(cell)[1]["total"] if cell.length else None

    def prefill(cell) -> str:
        if not cell.length:
            return "?"
        chunk = plan(cell)[0]
        return "one-shot" if chunk is None else f"chunk {chunk}"

    return estimate, prefill


def cmd_eval(args: argparse.Namespace) -> int:
    plan = plan_run(args)
    references, rules = given_report_options(args)
    from . import models, parallel, runner
    from .plan import describe
    from .results import Manifest, ResultStore
    from .scaling import check_supported, rope_note
    from .tables import aggregate_perplexity, aggregate_positions

    shard = parallel.shard_from_env()
    if not args.dry_run:
        parallel.init_process_group(shard)
    device = args.device
    if shard.active and device == "auto" and args.device_map is None:
        import torch

        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    model, tokenizer, info = models.load(args.model, dtype=args.dtype, device=device, attn_impl=args.attn_impl,
                                         trust_remote_code=args.trust_remote_code, device_map=args.device_map,
                                         allow_pickle_weights=args.allow_pickle_weights, weights=not args.dry_run)
    check_supported(model)
    window_info = sliding_window_setup(model, args.sliding_window_attention, plan.lengths, plan.tasks)
    specs = runner.resolve_specs(model, build_specs(args.method, args.factor, args.original_ctx))
    if {"perplexity", "passkey", "temperature-sweep", "ruler"} & set(plan.tasks):
        check_specs_against_lengths(specs, plan.lengths)
    if "passkey" in plan.tasks:
        check_passkey_lengths(tokenizer, plan.lengths, args.seed)
    if "ruler" in plan.tasks:
        from .ruler import check_lengths, resolve_tasks

        check_lengths(resolve_tasks(args.ruler_tasks), tokenizer, plan.lengths)
    if args.no_progress:
        import datasets

        datasets.disable_progress_bars()  # the parquet / json builders' bars
    main_store, main_manifest = ResultStore(plan.out), Manifest(plan.out)
    if shard.active:
        folder = parallel.shard_dir(plan.out, shard.rank)
        store = ResultStore(folder, resume_from=[plan.out], lock_dir=plan.out)
        manifest = Manifest(folder, lock_dir=plan.out)
    else:
        store, manifest = main_store, main_manifest
    session = runner.Session(model, tokenizer, info.name, store, manifest, shard, not args.no_progress, info, plan.out)
    inputs = runner.RunInputs(args, specs, plan.lengths,
                              lambda: load_documents(args, plan.lengths, tokenizer, info.bos_token_id,
                                                     info.vocab_size))
    tasks = [runner.task_class(name).from_inputs(inputs, session) for name in plan.tasks]
    run_plan = runner.build_plan(tasks, session)
    if args.dry_run:
        if shard.rank == 0:
            status = runner.plan_status(run_plan, {task.name: task for task in tasks}, store)
            estimate, prefill = memory_estimate(model, info.dtype, args.chunk_size, args.prefill_chunk, info.device)
            print(describe(status, estimate, shard.world, prefill))
        return EXIT_OK
    store.remove_stale_temp_files()  # only those of writers that are gone
    if shard.rank == 0:
        main_store.remove_stale_temp_files()
    plan.out.mkdir(parents=True, exist_ok=True)
    run_info = {"model_info": info.__dict__, "specs": [str(s) for s in specs], "world_size": shard.world,
                "documents": [(d.doc_id, int(d.ids.numel())) for d in inputs.loaded_documents()],
                "rope": rope_note(model), "sliding_window_attention": window_info}
    if shard.rank == 0:
        main_manifest.start(recorded_command(sys.argv, args.out or ""),
                            {**vars(args), "out": shown_path(str(plan.out))}, run_info)
        from .scaling import layer_rope_bases

        bases = layer_rope_bases(model.config)
        theta = ", ".join(f"{t} {b:g}" for t, b in bases.items()) if bases else f"{info.rope_theta:g}"
        print(f"{info.name}: {info.architecture}, |D|={info.rotary_dim}, theta={theta}, "
              f"native {info.native_ctx}, {info.dtype} on {info.device}; tasks {', '.join(plan.tasks)}; "
              f"methods {', '.join(s.short for s in specs)}; out {plan.out}"
              + (f"; {shard.world} processes" if shard.active else ""), file=sys.stderr)
    try:
        failed = runner.run_cells(run_plan, tasks, session)
    except KeyboardInterrupt:
        main_manifest.finish("interrupted")
        print(f"interrupted; finished rows are in {plan.out} (rerun the same command to resume).", file=sys.stderr)
        return EXIT_INTERRUPTED
    if shard.active:
        parallel.barrier(shard)
        if shard.rank == 0:
            parallel.merge_shards(plan.out, shard.world, main_store, main_manifest)
            main_store.derive("perplexity", "perplexity_docs",
                              lambda docs: aggregate_perplexity(docs, seed=args.seed))
            main_store.derive("perplexity_positions", "perplexity_positions_docs", aggregate_positions)
            failed = list(main_manifest.failed_cells())
        parallel.barrier(shard)
        parallel.shutdown(shard)
        if shard.rank != 0:
            return EXIT_CELLS_FAILED if failed else EXIT_OK
    main_manifest.finish("finished" if not failed else "finished with failed cells")
    print_summary(main_store)
    if not args.no_plots:
        try:
            from .report import record_options

            record_options(plan.out, references, rules)
            with main_store.locked():  # two runs into one folder draw one after the other
                paths = write_figures_and_report(plan.out)
            print(f"figures and report: {', '.join(str(p) for p in paths)}", file=sys.stderr)
        except Exception as exc:  # a figure must never cost the numbers
            print(f"warning: could not draw figures ({type(exc).__name__}: {exc})", file=sys.stderr)
    if failed:
        print(f"{len(failed)} cell(s) failed (see {plan.out / 'manifest.json'}): " + "; ".join(failed), file=sys.stderr)
        return EXIT_CELLS_FAILED
    return EXIT_OK


def _labelled(frame):
    """`frame` in the registry's method order with a `spec` column holding each series' display label."""
    from .tables import method_display, method_sort_key

    order = sorted(range(len(frame)), key=lambda i: method_sort_key(frame["method"].iloc[i], frame["factor"].iloc[i]))
    frame = frame.iloc[order]
    return frame.assign(spec=[method_display(m, f) for m, f in zip(frame["method"], frame["factor"])])


def _with_scoring(frame):
    """Labels that name the scoring rule too when a passkey table mixes rules (e.g. paper and
    paper-rerotate rows of one method)."""
    if "scoring" not in frame or frame["scoring"].nunique() < 2:
        return frame
    from .tables import SCORING_WORDS

    return frame.assign(spec=[f"{spec}, {SCORING_WORDS[scoring]}" if scoring in SCORING_WORDS else spec
                              for spec, scoring in zip(frame["spec"], frame["scoring"])])


def print_summary(store) -> None:
    """The run's headline tables on stdout: perplexity by method × length, passkey accuracy by
    method × length with the passkey context, leaderboard metric by method × task, RULER mean by
    method × length."""
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        table = store.read("perplexity")
        if not table.empty:
            table = _labelled(table)
            for (dataset, protocol), part in table.groupby(["dataset", "protocol"]):
                pivot = part.pivot_table(index="spec", columns="context_length", values="ppl", sort=False)
                print(f"\nperplexity — {dataset}, {protocol} (token-weighted)")
                print(pivot.round(3).to_string())
        rows = store.read("passkey")
        if not rows.empty:
            from .tables import PASSKEY_THRESHOLD, passkey_accuracy, passkey_effective_context

            summary = _with_scoring(_labelled(passkey_accuracy(rows, by=("context_length",))))
            pivot = summary.pivot_table(index="spec", columns="context_length", values="accuracy", sort=False)
            pivot = pivot.round(3).rename(columns=lambda c: int(float(c)))
            context = _with_scoring(_labelled(passkey_effective_context(rows))).set_index("spec")["effective_context"]
            pivot["passkey context"] = [("none" if pd.isna(context.get(spec)) else str(int(context.get(spec))))
                                        for spec in pivot.index]
            print(f"\npasskey accuracy (fraction of prompts; passkey context = largest length with ≥ "
                  f"{PASSKEY_THRESHOLD:.0%}, none: no length reaches it)")
            print(pivot.to_string())
        board = store.read("leaderboard")
        if not board.empty:
            from .leaderboard import PAPER_TASKS

            headline = {(task, metric) for task, (_, metric) in PAPER_TASKS.items()}
            board = board[[(t.removesuffix("_local"), m) in headline for t, m in zip(board.task, board.metric)]]
            if not board.empty:
                board = _labelled(board)
                print("\nleaderboard (paper metrics)")
                print(board.pivot_table(index="spec", columns="task", values="value", sort=False).round(4).to_string())
        ruler = store.read("ruler")
        if not ruler.empty:
            from .tables import ruler_means

            means = _labelled(ruler_means(ruler))
            print("\nRULER mean score over tasks (report.md: per task, ± stderr, paired differences)")
            print(means.pivot_table(index="spec", columns="context_length", values="mean_score", sort=False)
                  .round(3).to_string())


@dataclass(frozen=True)
class Command:
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Subcommands; `eval` is the default (`run_eval.py --model ...` means `run_eval.py eval --model ...`).
COMMANDS: dict[str, Command] = {
    "eval": Command("run an evaluation (default)",
                    "Evaluate RoPE context-extension methods (PI, NTK, NTK-by-parts, YaRN, dynamic variants) with "
                    "the YaRN paper's protocols.", add_eval_arguments, cmd_eval),
    "methods": Command("frequency tables of the methods",
                       "Print each method's frequency table summary: first/last inv_freq, ramp bounds, attention "
                       "scale.", add_methods_arguments, cmd_methods),
    "plot": Command("figures and report.md from a run's tables",
                    "Figures (PNG + PDF under DIR/figures) and DIR/report.md from a run's tables.",
                    add_plot_arguments, cmd_plot),
    "compare": Command("a run next to the paper's published numbers",
                       "Put a run's perplexity / passkey / leaderboard numbers next to the YaRN paper's published "
                       "ones for the same model, with the relative difference (run - paper) / paper.",
                       add_compare_arguments, cmd_compare),
    "effective-context": Command("effective context per method from one or more run folders",
                                 "The longest length at which each method x factor keeps perplexity within a "
                                 "tolerance of its best at <= L, passkey accuracy and the RULER mean above "
                                 "thresholds, from the tables of all RUN_DIRs together (markdown table).",
                                 add_effective_context_command_arguments, cmd_effective_context),
}


def build_parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="run_eval.py", description=COMMANDS["eval"].description,
        epilog="Without a command, `eval` is meant: `run_eval.py --model M ...` = `run_eval.py eval --model M ...` "
               "(`run_eval.py eval --help` lists its options).")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=command.description,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.add_arguments(sub)
    return top


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Arguments of one invocation; a first argument that is no command name (nor -h) means `eval`."""
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["eval", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "eval" and args.task is not None:  # the task file's fields, under the given flags
        args = apply_task_file(args, argv[1:], add_eval_arguments)
    return args


def _quiet_libraries() -> None:
    """Our own progress bars and one-sentence errors; not the libraries' weight-loading bars."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (a scheduler's polite kill) ends the run the way Ctrl-C does: the row being written
    is finished (writes hold signals), the manifest says `interrupted`, the exit code is 130."""
    import signal
    import threading

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    """Run one invocation; Ctrl-C (or SIGTERM) at any moment is one line and exit code 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _terminate_like_ctrl_c()
    _quiet_libraries()
    from .results import ResultWriteError

    try:
        args = parse_args(argv)
        return COMMANDS[args.command].run(args)
    except EvalHarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ResultWriteError as exc:
        print(f"error: {exc.strerror}.", file=sys.stderr)
        return EXIT_WRITE_FAILED
