"""`eval`: arguments → checks → model → the registry's tasks → cells → tables, summary, figures.

The shared argument groups live here; each task adds its own group, checks, cells and summary
(`task.TaskDefinition`, looked up in `registry`), so this module names no task.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from .. import models, parallel, registry, runner
from ..errors import UsageError
from ..memory import layer_windows
from ..methods import describe as describe_method
from ..models import check_attn_impl, set_sliding_window, sliding_window
from ..options import (
    DEFAULT_PREFILL_CHUNK,
    MAX_SEED,
    PREFILL_AUTO,
    PREFILL_OFF,
    StoreGiven,
    bounded_count,
    checked_text,
    comma_items,
    parse_factors,
    parse_lengths,
    parse_prefill_chunk,
    positive_count,
)
from ..plan import describe
from ..prefill import plan_prefill
from ..progress import other_bars_off
from ..report import record_options
from ..results import Manifest, ResultStore, check_run_folder
from ..scaling import check_supported, layer_rope_bases, rope_note
from ..task import CommonOptions, RunInputs
from ..taskfiles import task_names as task_file_names
from .common import (
    EXIT_CELLS_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PSEUDO_FILE_SYSTEMS,
    add_effective_context_arguments,
    add_reference_argument,
    build_specs,
    effective_context_rules,
    given_report_options,
    in_pseudo_file_system,
    parse_references,
    write_figures_and_report,
)


def eval_examples() -> str:
    """`eval --help`'s examples: each registered task's own example line, a task file, a dry run."""
    names = registry.task_names()
    lines = [definition.example for definition in registry.definitions() if definition.example]
    lines += [f"--model M --method native --task {task_file_names()[0]}      # a task file, flags override it",
              f"--model M --tasks {','.join(names[:2])} --out results/run1 --dry-run   # the plan, nothing run"]
    return "examples:\n" + "\n".join(f"  run_eval.py {line}" for line in lines)


def parse_window(text: str) -> int | str:
    """`--sliding-window-attention`: `off` or a token count (`4096`, `4k`)."""
    if str(text).strip().lower() == "off":
        return "off"
    return positive_count(text, f"--sliding-window-attention {text!r} is not valid; give a size ≥ 1 "
                                "(e.g. 4096 or 4k) or off.")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of `eval`: the shared groups, then each registered task's group, then report and
    output options."""
    p.epilog = eval_examples()
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2-135m",
                   help="hub id, local folder, .gguf file, smollm2-135m (bundled GGUF), gemma3-270m (after `bash "
                        "scripts/bootstrap.sh gemma`) or random:NAME (tiny, llama2-7b, ...) (default: %(default)s)")
    g.add_argument("--dtype", default="auto",
                   help="auto (cuda → bfloat16, cpu → float32), float32, bfloat16, float16 (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: %(default)s: cuda if "
                                                    "available, else cpu)")
    g.add_argument("--attn-impl", default=None,
                   help="attention implementation: sdpa, eager, flash_attention_2 (default: transformers' choice)")
    g.add_argument("--device-map", default=None,
                   help="accelerate device map for models larger than one GPU, e.g. auto (default: none, one device)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (default: off)")
    g.add_argument("--allow-pickle-weights", action="store_true",
                   help="also load .bin checkpoints (torch.load(weights_only=True)) (default: off, safetensors only)")
    g.add_argument("--sliding-window-attention", type=parse_window, default=None, metavar="N|off",
                   help="sliding-window attention size for configs with sliding_window (Mistral, Qwen2), or off "
                        "(full attention) (default: the config's)")
    g = p.add_argument_group("scaling")
    g.add_argument("--method", default="base,yarn",
                   help="comma list of methods: base, pi (linear), ntk, ntk-by-parts, yarn, dynamic-pi, dynamic-ntk, "
                        "dynamic-yarn, native (the RoPE the model ships with); options as method:factor:key=value "
                        "(e.g. yarn:16:truncate=false) (default: %(default)s)")
    g.add_argument("--factor", type=checked_text("--factor", parse_factors), default="2",
                   help="comma list of scale factors s, a grid with --method (default: %(default)s)")
    g.add_argument("--original-ctx", type=bounded_count("--original-ctx"), default=None,
                   help="pre-trained context L (default: the config's original_max_position_embeddings, "
                        "else max_position_embeddings)")
    g.add_argument("--dynamic-cache", choices=("recompute", "rerotate"), default="recompute",
                   help="greedy generation with a dynamic method past L: a full forward per token, exactly what "
                        "cache-free generate computes (recompute), or the KV cache with its keys re-rotated to the "
                        "current scale, the YaRN paper's advice for dynamic scaling (rerotate: one prefill + one "
                        "token per step) (default: %(default)s)")
    g = p.add_argument_group("tasks and lengths")
    g.add_argument("--task", default=None, metavar="NAME|FILE.yaml",
                   help="a task file: its fields set the options below (a flag given on the command line wins); "
                        f"a name under tasks/ ({', '.join(task_file_names())}) or the path of a .yaml file "
                        "(default: none)")
    g.add_argument("--tasks", default=registry.task_names()[0],
                   help=f"comma list of {', '.join(registry.task_names())} (default: %(default)s)")
    g.add_argument("--lengths", type=checked_text("--lengths", parse_lengths), default="2k:8k:2k",
                   help="context lengths: start:stop:step or comma list; k = 1024 (default: %(default)s)")
    g.add_argument("--seed", type=bounded_count("--seed", 0, MAX_SEED), default=0, action=StoreGiven,
                   help="seed of every random choice (samples, bootstrap, prompts); lm-eval tasks keep lm-eval's "
                        "own seeds (0, 1234, 1234, 1234) unless --seed is given, which then sets all four "
                        "(default: %(default)s)")
    g = p.add_argument_group("computation")
    g.add_argument("--chunk-size", type=bounded_count("--chunk-size"), default=None,
                   help="positions per LM-head chunk (default: as many as 256 MB of logits hold)")
    g.add_argument("--prefill-chunk", type=parse_prefill_chunk, default=PREFILL_AUTO, metavar="N|auto|off",
                   help="run each long forward (scored windows, and prompt prefills before generation) "
                        "in chunks of N tokens through the model's KV cache (memory bounded by the chunk; "
                        "sliding-window layers cost "
                        f"T·(N + window)); auto: chunks of {DEFAULT_PREFILL_CHUNK} only when the one-shot forward's "
                        "estimated peak exceeds the device's memory; off: always one forward per window. Same "
                        "numbers up to rounding (default: %(default)s)")
    g.add_argument("--batch-size", type=bounded_count("--batch-size"), default=1,
                   help="examples per forward in the lm-eval tasks (dynamic methods always 1) (default: %(default)s)")
    g.add_argument("--save-samples", action="store_true",
                   help="keep lm-eval's per-example log-likelihoods and generations (default: off)")
    added = set()
    for definition in registry.definitions():
        adder = getattr(type(definition).add_arguments, "__code__", None)
        if adder not in added:
            definition.add_arguments(p)
            added.add(adder)
    add_effective_context_arguments(p)
    add_reference_argument(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="run folder; rerun into it to resume (default: results/<date-time>)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (default: off)")
    g.add_argument("--no-plots", action="store_true",
                   help="skip figures and report.md at the end of the run (default: off)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells, tokens, done vs to do in --out, peak-memory estimate) and stop "
                        "(default: off)")


@dataclass
class RunContext:
    """A checked `eval` command line: the folder, the tasks asked (names and typed options), the
    options every task shares."""

    out: Path
    tasks: list[str]
    options: dict
    common: CommonOptions


def common_options(args: argparse.Namespace, lengths: list[int]) -> CommonOptions:
    return CommonOptions(lengths=tuple(lengths), factors=tuple(parse_factors(args.factor)), seed=args.seed,
                         seed_given=getattr(args, "seed_given", False), dynamic_cache=args.dynamic_cache,
                         prefill_chunk=args.prefill_chunk, chunk_size=args.chunk_size, batch_size=args.batch_size,
                         save_samples=args.save_samples)


def plan_run(args: argparse.Namespace) -> RunContext:
    """Validate everything that can be validated before loading anything heavy."""
    valid = registry.task_names()
    tasks = list(dict.fromkeys(comma_items(args.tasks, "--tasks")))
    if not tasks:
        raise UsageError(f"--tasks {args.tasks!r} names no task; valid tasks: {', '.join(valid)}.")
    for task in tasks:
        registry.definition(task)  # unknown: one sentence listing the valid names
    lengths = parse_lengths(args.lengths)
    build_specs(args.method, args.factor, args.original_ctx)  # raises on bad methods / factors
    parse_references(args.reference)
    effective_context_rules(args)
    check_attn_impl(args.attn_impl)
    if args.device_map is not None and args.device not in ("auto", None):
        raise UsageError("--device-map only applies with --device auto; drop it or add that.")
    own = {name: registry.definition(name).option_names() for name in valid}
    for dest in getattr(args, "given", ()):  # a task's own option given while that task is not run
        owners = [name for name in valid if dest in own[name]]
        if owners and not set(owners) & set(tasks):
            raise UsageError(f"--{dest.replace('_', '-')} only applies with --tasks {' or '.join(owners)}; drop it "
                             "or add that task.")
    common = common_options(args, lengths)
    options = {}
    for name in tasks:
        definition = registry.definition(name)
        options[name] = definition.options(args)
        definition.check(options[name], common)
    if args.out is not None and not args.out.strip():
        raise UsageError("--out '' is empty; give a folder (new, or an earlier run's to resume).")
    out = Path(args.out).expanduser() if args.out else Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    # --dry-run too (it creates nothing, and a plan for an impossible folder misleads), except that it
    # may read a folder it could not write, e.g. an archived run
    check_output_folder(out, writable=not args.dry_run)
    check_run_folder(out)  # unrepairable tables stop here; repairable ones are announced
    return RunContext(out, tasks, options, common)


def check_output_folder(out: Path, writable: bool = True) -> None:
    """`--out`: a folder that exists or can be created, that this process can write (when `writable`),
    and not inside /proc, /sys or /dev; UsageError (one sentence) otherwise. Creates nothing."""
    resolved = out.expanduser().resolve()
    if in_pseudo_file_system(out):
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
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r}: {str(existing)!r} is not writable; give a folder you can write.")


def sliding_window_setup(model, option, lengths: list[int], own_forward: bool) -> dict:
    """Apply `--sliding-window-attention` before the first forward; warn (one line) when a length
    exceeds the model's window, the option was not given and a task runs the forward itself.
    Returns the manifest entry."""
    configured = sliding_window(model)
    if option is not None:
        set_sliding_window(model, None if option == "off" else option)
    elif configured and own_forward and max(lengths) > configured:
        if None in layer_windows(model.config):  # local and global layers by design (Gemma 2/3)
            print(f"note: lengths up to {max(lengths)} exceed the {configured}-token window of the model's local "
                  "layers; its full-attention layers see every token.", file=sys.stderr)
        else:
            print(f"warning: lengths up to {max(lengths)} exceed the model's sliding attention window {configured}; "
                  "tokens further back are not attended (--sliding-window-attention off for full attention).",
                  file=sys.stderr)
    return {"config": configured, "option": option, "applied": sliding_window(model)}


def check_specs_against_model(specs, info, length: int) -> None:
    """Each spec's frequency table computed once on the model's |D| and base (cheap): a spec the model
    cannot take (NTK on |D| = 2, ...) is refused in one sentence before anything is written."""
    for spec in specs:
        if spec.method != "native":
            describe_method(spec, info.rotary_dim, info.rope_theta, length if spec.is_dynamic else None)


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
    n_params = sum(p.numel() for p in model.parameters())
    attn_impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    option = PREFILL_OFF if prefill_chunk is None else prefill_chunk

    def plan(cell):
        cell_option = option if cell.chunkable else PREFILL_OFF
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


def recorded_args(args: argparse.Namespace, context: RunContext) -> dict:
    """The arguments as the manifest records them: the command line with each asked task's options
    as resolved (defaults that depend on other options filled in) and `--out` as `shown_path`."""
    recorded = {name: value for name, value in vars(args).items() if name != "given"}
    for options in context.options.values():
        if options is not None:
            recorded.update({k: v for k, v in flat_fields(options).items() if k in recorded})
    return {**recorded, "out": shown_path(str(context.out))}


def flat_fields(options) -> dict:
    """The values a task's options resolve (`recorded()`: defaults that depend on other options,
    by destination name); none for options that take the command line as it is."""
    return options.recorded() if hasattr(options, "recorded") else {}


def print_summary(store) -> None:
    """The run's headline tables on stdout, one per registered task that has rows."""
    for definition in registry.definitions():
        text = definition.summary(store)
        if text is not None:
            print(text)


def cmd_eval(args: argparse.Namespace) -> int:
    context = plan_run(args)
    references, rules = given_report_options(args)
    definitions = {name: registry.definition(name) for name in context.tasks}
    recorded, runs = recorded_args(args, context), runner.earlier_runs(context.out)
    runner.check_same_settings(context.out, runs, {name: {option: recorded.get(option) for option in d.resume_options}
                                                   for name, d in definitions.items()}, recorded)
    shard = parallel.shard_from_env()
    if not args.dry_run:
        parallel.init_process_group(shard)
    device = args.device
    if shard.active and device == "auto" and args.device_map is None:
        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    model, tokenizer, info = models.load(args.model, dtype=args.dtype, device=device, attn_impl=args.attn_impl,
                                         trust_remote_code=args.trust_remote_code, device_map=args.device_map,
                                         allow_pickle_weights=args.allow_pickle_weights, weights=not args.dry_run)
    check_supported(model)
    lengths = list(context.common.lengths)
    window_info = sliding_window_setup(model, args.sliding_window_attention, lengths,
                                       any(d.own_forward for d in definitions.values()))
    runner.check_same_numerics(context.out, runs, info.name, info.dtype, window_info["applied"])
    specs = runner.resolve_specs(model, build_specs(args.method, args.factor, args.original_ctx))
    check_specs_against_model(specs, info, max(lengths))
    if any(d.lengths_matter for d in definitions.values()):
        check_specs_against_lengths(specs, lengths)
    for name, definition in definitions.items():
        definition.check_loaded(context.options[name], context.common, tokenizer)
    bars_off = args.no_progress or not sys.stderr.isatty()  # a log file gets no bars (carriage returns)
    if bars_off:
        import datasets  # lazy: ~1 s; only to silence its builders' bars

        datasets.disable_progress_bars()  # the parquet / json builders' bars
    main_store, main_manifest = ResultStore(context.out), Manifest(context.out)
    if shard.active:
        folder = parallel.shard_dir(context.out, shard.rank)
        store = ResultStore(folder, resume_from=[context.out], lock_dir=context.out)
        manifest = Manifest(folder, lock_dir=context.out)
    else:
        store, manifest = main_store, main_manifest
    session = runner.Session(model, tokenizer, info.name, store, manifest, shard, not args.no_progress, info,
                             context.out)
    inputs = RunInputs(specs, context.common)
    tasks = [definitions[name].cells(context.options[name], inputs, session) for name in context.tasks]
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
    context.out.mkdir(parents=True, exist_ok=True)
    run_info = {"model_info": info.__dict__, "specs": [str(s) for s in specs], "world_size": shard.world,
                "documents": [(d.doc_id, int(d.ids.numel())) for d in inputs.computed("documents", [])],
                "rope": rope_note(model), "sliding_window_attention": window_info}
    if shard.rank == 0:
        main_manifest.start(recorded_command(sys.argv, args.out or ""), recorded, run_info)
        bases = layer_rope_bases(model.config)
        theta = ", ".join(f"{t} {b:g}" for t, b in bases.items()) if bases else f"{info.rope_theta:g}"
        print(f"{info.name}: {info.architecture}, |D|={info.rotary_dim}, theta={theta}, "
              f"native {info.native_ctx}, {info.dtype} on {info.device}; tasks {', '.join(context.tasks)}; "
              f"methods {', '.join(s.short for s in specs)}; out {context.out}"
              + (f"; {shard.world} processes" if shard.active else ""), file=sys.stderr)
    try:
        with other_bars_off(bars_off):  # lm-eval's own bars
            failed = runner.run_cells(run_plan, tasks, session)
    except KeyboardInterrupt:
        main_manifest.finish("interrupted")
        print(f"interrupted; finished rows are in {context.out} (rerun the same command to resume).",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if shard.active:
        parallel.barrier(shard)
        if shard.rank == 0:
            parallel.merge_shards(context.out, shard.world, main_store, main_manifest)
            for definition in registry.definitions():
                definition.derive(main_store, context.common)
            failed = list(main_manifest.failed_cells())
        parallel.barrier(shard)
        parallel.shutdown(shard)
        if shard.rank != 0:
            return EXIT_CELLS_FAILED if failed else EXIT_OK
    main_manifest.finish("finished" if not failed else "finished with failed cells")
    print_summary(main_store)
    if not args.no_plots:
        try:
            record_options(context.out, references, rules)
            with main_store.locked():  # two runs into one folder draw one after the other
                paths = write_figures_and_report(context.out)
            print(f"figures and report: {', '.join(str(p) for p in paths)}", file=sys.stderr)
        except Exception as exc:  # a figure must never cost the numbers
            print(f"warning: could not draw figures ({type(exc).__name__}: {exc})", file=sys.stderr)
    if failed:
        print(f"{len(failed)} cell(s) failed (see {context.out / 'manifest.json'}): " + "; ".join(failed),
              file=sys.stderr)
        return EXIT_CELLS_FAILED
    return EXIT_OK


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
