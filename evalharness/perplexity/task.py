"""The perplexity and temperature-sweep tasks as the command line sees them: options (the corpus,
the protocol, the temperature grid), their checks, the documents they read, cells and summary."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from .. import corpora
from ..analysis.display import labelled
from ..errors import UsageError
from ..methods import MAX_ATTENTION_FACTOR, ScalingSpec
from ..options import bounded_count, parse_grid
from ..runner import Session
from ..task import CommonOptions, RunInputs, TaskDefinition
from . import figures
from .analysis import aggregate_perplexity, aggregate_positions
from .engine import PerplexityCells, PerplexityTask, TemperatureSweepCells

DEFAULT_STRIDE = 256
DEFAULT_TEMPERATURES = "1.0:1.4:0.05"


@dataclass(frozen=True)
class PerplexityOptions:
    """The corpus (`--dataset` and its selection) and the perplexity protocol, with the defaults
    that depend on the protocol resolved (sliding: stride 256, BOS in every window)."""

    dataset: str = "coq-stdlib"
    text_field: str | None = None
    protocol: str = "truncated"
    stride: int | None = None
    window_bos: str | None = None
    position_bucket: int | None = None
    docs: int | None = None
    sample: int | None = None
    min_tokens: int | None = None

    @property
    def resolved_stride(self) -> int:
        return DEFAULT_STRIDE if self.stride is None else self.stride

    @property
    def resolved_window_bos(self) -> str:
        """sliding: BOS in every window unless asked otherwise; truncated: one window per document,
        BOS at its start."""
        return (self.window_bos or "every") if self.protocol == "sliding" else "first"

    def recorded(self) -> dict:
        """The options as the manifest records them (stride and BOS rule resolved)."""
        return {**asdict(self), "stride": self.resolved_stride if self.protocol == "sliding" else self.stride,
                "window_bos": self.resolved_window_bos}


@dataclass(frozen=True)
class TemperatureSweepOptions:
    """The corpus and protocol of the perplexity task, and the grid of YaRN attention factors."""

    corpus: PerplexityOptions
    temperatures: str = DEFAULT_TEMPERATURES

    def recorded(self) -> dict:
        """The options as the manifest records them."""
        return {**self.corpus.recorded(), "temperatures": self.temperatures}


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("perplexity and temperature-sweep: corpus and protocol")
    g.add_argument("--dataset", default="coq-stdlib",
                   help="govreport, proofpile, pg19 (HF datasets; NAME=DIR reads a local copy in the hub layout), "
                        "hf:OWNER/NAME[:SPLIT] or hf:OWNER/NAME:CONFIG:SPLIT (any HF dataset, split test unless "
                        "given), coq-stdlib, debian-policy (offline), local:PATH (default: %(default)s)")
    g.add_argument("--text-field", default=None,
                   help="text column of .jsonl/.parquet files and hub datasets (default: a stored input_ids column, "
                        "else text; govreport: input or report)")
    g.add_argument("--protocol", choices=("truncated", "sliding"), default="truncated",
                   help="first L tokens per document (truncated), or a sliding window L moved by --stride "
                        "(default: %(default)s)")
    g.add_argument("--stride", type=bounded_count("--stride"), default=None,
                   help=f"sliding-window stride S (default: {DEFAULT_STRIDE})")
    g.add_argument("--window-bos", choices=("every", "first"), default=None,
                   help="sliding: BOS + L−1 document tokens in every window (the authors' algorithm) or BOS only "
                        "at the document start (the transformers perplexity recipe) (default: every)")
    g.add_argument("--position-bucket", type=bounded_count("--position-bucket"), default=None,
                   help="width in tokens of the loss-by-position buckets (default: original context L / 8)")
    g.add_argument("--docs", type=bounded_count("--docs"), default=None,
                   help="the first N documents after the length filter, as the paper (default: every document)")
    g.add_argument("--sample", type=bounded_count("--sample"), default=None,
                   help="instead of --docs: a seeded random sample of N documents (default: none)")
    g.add_argument("--min-tokens", type=bounded_count("--min-tokens", 0), default=None,
                   help="keep documents with at least this many tokens (default: truncated, the largest length; "
                        "sliding, every document)")


def corpus_options(args: argparse.Namespace) -> PerplexityOptions:
    """The corpus and protocol options; a task file's sliding-window fields (`stride`, `window_bos`)
    yield to a `--protocol truncated` typed on the command line (only typed ones are refused)."""
    typed = getattr(args, "given", None)
    stride, window_bos = args.stride, args.window_bos
    if args.protocol != "sliding" and typed is not None:
        stride = stride if "stride" in typed else None
        window_bos = window_bos if "window_bos" in typed else None
    return PerplexityOptions(dataset=args.dataset, text_field=args.text_field, protocol=args.protocol,
                             stride=stride, window_bos=window_bos, position_bucket=args.position_bucket,
                             docs=args.docs, sample=args.sample, min_tokens=args.min_tokens)


def check_corpus(options: PerplexityOptions, common: CommonOptions) -> None:
    """The corpus selection and the protocol's stride and BOS rule, against the lengths asked."""
    if options.text_field is not None and not options.text_field.strip():
        raise UsageError(f"--text-field {options.text_field!r} is empty; give a column name (e.g. text) or leave "
                         "it out.")
    if options.docs is not None and options.sample is not None:
        raise UsageError("--docs (first N documents) and --sample (random N documents) exclude each other; give one.")
    for flag, given in (("--stride", options.stride), ("--window-bos", options.window_bos)):
        if given is not None and options.protocol != "sliding":
            raise UsageError(f"{flag} only applies with --protocol sliding; drop it or add that.")
    if options.protocol == "sliding":
        stride, shortest = options.resolved_stride, min(common.lengths)
        if stride > shortest:
            raise UsageError(f"--stride {stride} is larger than the smallest window {shortest}: "
                             "tokens would go unscored.")
        if options.resolved_window_bos == "every" and stride > shortest - 1:
            raise UsageError(f"--stride {stride} is larger than the {shortest - 1} document tokens the "
                             f"smallest window {shortest} holds besides its BOS (--window-bos every): "
                             "tokens would go unscored.")


def load_documents(options: PerplexityOptions, lengths, tokenizer, bos: int | None, vocab_size: int | None = None,
                   seed: int = 0) -> list:
    """The corpus documents the options select (`--dataset` and its selection options, the seed of
    `--sample`); UsageError when a truncated length is longer than a selected document, or a sliding
    window longer than every one."""
    min_tokens = options.min_tokens
    if min_tokens is None:
        min_tokens = corpora.default_min_tokens(options.protocol, lengths, bos is not None)
    docs = corpora.load_corpus(options.dataset, tokenizer, min_tokens=min_tokens, n_docs=options.docs,
                               sample=options.sample, seed=seed, text_field=options.text_field)
    if vocab_size is not None:  # stored input_ids made for another tokenizer
        corpora.check_token_ids(docs, vocab_size, options.dataset)
    flag, asked = ("--sample", options.sample) if options.sample is not None else ("--docs", options.docs)
    if asked is not None and len(docs) < asked:  # fewer than asked: said, not silent (the tables hold n_docs)
        print(f"warning: {flag} {asked} asks for {asked} documents, but only {len(docs)} of {options.dataset} have "
              f"≥ {min_tokens} tokens; the run uses those {len(docs)}.", file=sys.stderr)
    if options.protocol == "truncated":
        shortest = min(d.ids.numel() for d in docs) + (bos is not None)
        if shortest < max(lengths):
            raise UsageError(f"length {max(lengths)} is longer than a selected document ({shortest} "
                             "tokens with BOS); lower --lengths or raise --min-tokens.")
    else:  # sliding: a document shorter than the window is one shorter window, but not every one may be
        longest = max(d.ids.numel() for d in docs) + (bos is not None)
        if longest < max(lengths):
            raise UsageError(f"length {max(lengths)} is longer than every selected document (the longest has "
                             f"{longest} tokens with BOS): no window would hold {max(lengths)} tokens; lower "
                             "--lengths or select longer documents.")
    return docs


def run_documents(options: PerplexityOptions, inputs: RunInputs, session: Session) -> list:
    """The documents of this run, loaded once for every task that reads the corpus."""
    info = session.info
    return inputs.shared("documents", lambda: load_documents(options, inputs.common.lengths, session.tokenizer,
                                                             info.bos_token_id, info.vocab_size, inputs.common.seed))


def protocol_of(options: PerplexityOptions, common: CommonOptions) -> PerplexityTask:
    return PerplexityTask(corpora.dataset_label(options.dataset), options.protocol, tuple(common.lengths),
                          options.resolved_stride if options.protocol == "sliding" else 0, common.chunk_size,
                          window_bos=options.resolved_window_bos,
                          position_bucket=options.position_bucket, prefill_chunk=common.prefill_chunk)


class Perplexity(TaskDefinition):
    name = "perplexity"
    own_forward = True
    example = "--model smollm2-135m --method base,pi,yarn --factor 2 --lengths 2k:8k:2k --docs 2"

    def add_arguments(self, parser):
        add_corpus_arguments(parser)

    def options(self, args):
        return corpus_options(args)

    def check(self, options, common):
        check_corpus(options, common)

    def cells(self, options, inputs, session):
        return PerplexityCells(session.model_name, session.info.bos_token_id, inputs.specs,
                               run_documents(options, inputs, session), protocol_of(options, inputs.common),
                               inputs.common.seed)

    def summary(self, store):
        table = store.read("perplexity")
        if table.empty:
            return None
        lines = []
        for (dataset, protocol), part in labelled(table).groupby(["dataset", "protocol"]):
            pivot = part.pivot_table(index="spec", columns="context_length", values="ppl", sort=False)
            lines += [f"\nperplexity — {dataset}, {protocol} (token-weighted)", pivot.round(3).to_string()]
        return "\n".join(lines)

    def figures(self, results_dir, figures_dir):
        return figures.figures(results_dir, figures_dir)

    def derive(self, store, common):
        store.derive("perplexity", "perplexity_docs", lambda docs: aggregate_perplexity(docs, seed=common.seed))
        store.derive("perplexity_positions", "perplexity_positions_docs", aggregate_positions)


def temperature_specs(factors, temperatures: str, original_ctx: int) -> list:
    """YaRN at each factor with its own attention factor, then with each value of the grid."""
    specs = []
    for factor in factors:
        specs.append(ScalingSpec("yarn", factor, original_ctx=original_ctx))
        specs += [ScalingSpec("yarn", factor, original_ctx=original_ctx, attention_factor=value)
                  for value in parse_grid(temperatures)]
    return specs


class TemperatureSweep(TaskDefinition):
    name = "temperature-sweep"
    own_forward = True

    def add_arguments(self, parser):
        g = parser.add_argument_group("temperature-sweep")
        g.add_argument("--temperatures", default=None,
                       help="grid of YaRN attention factors sqrt(1/t), start:stop:step or comma list "
                            f"(default: {DEFAULT_TEMPERATURES})")

    def option_names(self):
        return super().option_names() | PERPLEXITY.option_names()  # the sweep reads the corpus options too

    def options(self, args):
        return TemperatureSweepOptions(corpus_options(args), args.temperatures or DEFAULT_TEMPERATURES)

    def check(self, options, common):
        check_corpus(options.corpus, common)
        try:
            grid = parse_grid(options.temperatures)
        except UsageError as exc:
            raise UsageError(f"--temperatures: {exc}") from None
        if any(not 0 < v <= MAX_ATTENTION_FACTOR for v in grid):
            raise UsageError(f"--temperatures {options.temperatures!r}: attention factors must be > 0 and "
                             f"≤ {MAX_ATTENTION_FACTOR:g}.")

    def cells(self, options, inputs, session):
        specs = temperature_specs(inputs.common.factors, options.temperatures, inputs.specs[0].original_ctx)
        return TemperatureSweepCells(session.model_name, session.info.bos_token_id, specs,
                                     run_documents(options.corpus, inputs, session),
                                     protocol_of(options.corpus, inputs.common), inputs.common.seed)


PERPLEXITY = Perplexity()
TEMPERATURE_SWEEP = TemperatureSweep()
