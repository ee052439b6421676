"""The perplexity engine: per-token NLL of long documents under the truncated and sliding-window
protocols. The decoder runs once per window without KV cache or mask tensor (or chunk by chunk,
`prefill.py`); the LM head + cross-entropy run in float32 chunks over scored positions only (the
[T, vocab] logits never exist); the same NLLs give the loss by position with no extra forward.

Protocols: docs/tasks-and-protocols.md#perplexity; cost: docs/performance.md#how-it-works
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import NonFiniteError
from ..parallel import Shard
from ..plan import Cell, Plan, cell_name
from ..prefill import hidden_chunks, prefill_chunk_for
from ..progress import CellProgress
from ..results import cell_key, key_row
from ..runner import Session, Task, resolve_specs, run_cells
from .analysis import aggregate_perplexity, aggregate_positions

DEFAULT_HEAD_BYTES = 256 * 2**20  # logits chunk budget (fp32) for the LM head


@dataclass(frozen=True)
class WindowScore:
    """NLL totals of one scored stretch of a document."""

    scored_tokens: int
    nll_sum: float

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.scored_tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)


@dataclass(frozen=True)
class DocScore:
    """A document's totals under one protocol and length: tokens and NLL over all its windows, and
    the sum over windows of each window's mean NLL (what the authors average)."""

    scored_tokens: int
    nll_sum: float
    n_windows: int
    window_nll_sum: float

    @property
    def ppl(self) -> float:
        """Token-weighted: exp(Σ nll / Σ scored tokens)."""
        return math.exp(self.nll_sum / self.scored_tokens)

    @property
    def ppl_paper(self) -> float:
        """The authors' averaging over this document's windows: exp(mean of window mean NLLs)."""
        return math.exp(self.window_nll_sum / self.n_windows)


# ---------------------------------------------------------------------------------------------
# Model plumbing
# ---------------------------------------------------------------------------------------------

def decoder_hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states [1, T, H] of the decoder (after its final norm): the base model's
    forward, no KV cache, no attention mask (causal path)."""
    backbone = model.base_model if model.base_model is not model else model.get_decoder()
    out = backbone(input_ids=input_ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def logit_transform(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the model's own forward does to the LM-head output before the softmax: Cohere's
    `logit_scale` (×), Granite's `logits_scaling` (÷), Gemma-2's `final_logit_softcapping`
    (cap·tanh(x/cap)). Identity for plain models."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, (int, float)):
        scale = None
    divide = getattr(config, "logits_scaling", None)
    cap = getattr(config, "final_logit_softcapping", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


def head_chunk_size(model, budget_bytes: int = DEFAULT_HEAD_BYTES) -> int:
    """Positions per LM-head chunk so that a chunk's fp32 logits stay within `budget_bytes`."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return max(64, budget_bytes // (4 * vocab))


def nll_from_hidden(model, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """−log p(targets[i] | hidden[i]) for i in range(len(targets)), float32, computed chunk by chunk.

    hidden: [N, H] (the states that predict the targets), targets: [N].
    """
    head = model.get_output_embeddings()
    transform = logit_transform(model)
    chunk_size = chunk_size or head_chunk_size(model)
    device = head.weight.device  # with a device map the head may sit on another GPU than the last layer
    hidden, targets = hidden.to(device), targets.to(device)
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=device)
    for start in range(0, targets.shape[0], chunk_size):
        stop = start + chunk_size
        logits = transform(head(hidden[start:stop]).float())
        out[start:stop] = F.cross_entropy(logits, targets[start:stop], reduction="none")
    return out


@torch.inference_mode()
def token_nll(model, input_ids: torch.Tensor, first_scored: int = 1, chunk_size: int | None = None,
              prefill_chunk: int | None = None) -> torch.Tensor:
    """NLL (float32, on the model's device) of input_ids[first_scored:] each given all tokens
    before it in this window. input_ids: 1-D. `prefill_chunk` C: the decoder runs in chunks of C
    tokens through its KV cache (`prefill.hidden_chunks`), each chunk scored as soon as it has run;
    None: one forward over the window. Raises NonFiniteError on NaN/inf."""
    if not 1 <= first_scored < input_ids.shape[-1]:
        raise ValueError(f"first_scored={first_scored} must be in [1, {input_ids.shape[-1] - 1}].")
    ids = input_ids.reshape(1, -1).to(model.get_input_embeddings().weight.device)
    total = ids.shape[1]
    if prefill_chunk is None or prefill_chunk >= total:
        hidden = decoder_hidden_states(model, ids)[0]
        nll = nll_from_hidden(model, hidden[first_scored - 1 : -1], ids[0, first_scored:], chunk_size)
    else:
        parts = []
        for start, states in hidden_chunks(model, ids, prefill_chunk):
            # hidden state at position p predicts token p + 1; scored: p in [first_scored − 1, T − 1)
            begin, stop = max(start, first_scored - 1), min(start + states.shape[1], total - 1)
            if stop > begin:
                parts.append(nll_from_hidden(model, states[0, begin - start : stop - start],
                                             ids[0, begin + 1 : stop + 1], chunk_size))
        nll = torch.cat(parts)
    if not torch.isfinite(nll).all():
        bad = int((~torch.isfinite(nll)).sum())
        raise NonFiniteError(f"{bad} of {nll.numel()} token NLLs are NaN or infinite.")
    return nll


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------

def with_bos(doc_ids: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """The document's token sequence as the model sees it: BOS first when there is one."""
    doc_ids = doc_ids.reshape(-1).long()
    if bos_id is None:
        return doc_ids
    return torch.cat([torch.tensor([bos_id], dtype=torch.long), doc_ids])


def truncated_nll(model, doc_ids: torch.Tensor, length: int, bos_id: int | None,
                  chunk_size: int | None = None, prefill_chunk: int | None = None) -> torch.Tensor:
    """Per-token NLL of the first `length`-token window of a document (BOS included in the
    length): a tensor of `length`−1 values on CPU; entry i scores window token i+1.
    `prefill_chunk`: as `token_nll`."""
    sequence = with_bos(doc_ids, bos_id)
    if sequence.shape[0] < length:
        raise ValueError(f"document has {sequence.shape[0]} tokens (with BOS), fewer than the length {length}.")
    return token_nll(model, sequence[:length], 1, chunk_size, prefill_chunk).cpu()


def truncated_curve(nll: torch.Tensor, lengths: Iterable[int]) -> dict[int, WindowScore]:
    """Truncated-protocol scores at each length from one pass's per-token NLL (valid for any
    method whose frequencies do not depend on the sequence length)."""
    curve = {}
    for length in lengths:
        if length - 1 > nll.shape[0]:
            raise ValueError(f"length {length} needs {length - 1} scored tokens; the pass has {nll.shape[0]}.")
        part = nll[: length - 1].double()
        curve[length] = WindowScore(length - 1, float(part.sum()))
    return curve


WINDOW_BOS = ("every", "first")  # sliding protocol: BOS in every window (authors) | at the document start


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window (inclusive)
    end: int  # one past the last token
    first_scored: int  # first scored token, absolute index (≥ begin + 1)


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Windows of `window` tokens of one sequence starting every `stride` tokens until one reaches
    the end; the first scores all of its tokens but the first, each later one only the tokens past
    the previous window's end (≤ stride of them). The `first` placement of BOS, over BOS + document."""
    if window < 2 or stride < 1:
        raise ValueError(f"window {window} must be ≥ 2 and stride {stride} ≥ 1.")
    if stride > window:
        raise ValueError(f"stride {stride} is larger than the window {window}: tokens would go unscored.")
    windows, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(previous_end, begin + 1)
        if end > first:
            windows.append(Window(begin, end, first))
        previous_end = end
        if end == n_tokens:
            break
    return windows


@dataclass(frozen=True)
class DocumentWindow:
    """One forward of the sliding protocol in document coordinates: the model reads
    ([BOS] if `bos`) + doc[begin:end] and scores doc[first_scored:end]."""

    begin: int
    end: int
    first_scored: int
    bos: bool

    def input_ids(self, doc_ids: torch.Tensor, bos_id: int | None) -> torch.Tensor:
        part = doc_ids.reshape(-1).long()[self.begin : self.end]
        return with_bos(part, bos_id) if self.bos else part

    @property
    def first_scored_position(self) -> int:
        """Position inside the window (0 = its first token) of the first scored token."""
        return self.first_scored - self.begin + int(self.bos)


def authors_windows(n_doc_tokens: int, window: int, stride: int, has_bos: bool) -> list[DocumentWindow]:
    """The authors' sliding windows (YaRN `eval/perplexity.py`): each window is BOS + the next
    window−1 document tokens (window tokens when there is no BOS), windows begin every `stride`
    document tokens, each scores the document tokens past the previous window's end; the first
    scores all of its document tokens (all but the first without BOS), the last reaches the end."""
    doc_per_window = window - int(has_bos)
    if doc_per_window < 1 or window < 2 or stride < 1:
        raise ValueError(f"window {window} must be ≥ 2 and stride {stride} ≥ 1.")
    if stride > doc_per_window:
        raise ValueError(f"stride {stride} is larger than the {doc_per_window} document tokens a window of "
                         f"{window} holds: tokens would go unscored.")
    windows, previous_end = [], 0
    for begin in range(0, n_doc_tokens, stride):
        end = min(begin + doc_per_window, n_doc_tokens)
        first = max(previous_end, begin + (0 if has_bos else 1))
        if end > first:
            windows.append(DocumentWindow(begin, end, first, has_bos))
        previous_end = end
        if end == n_doc_tokens:
            break
    return windows


def document_windows(n_doc_tokens: int, window: int, stride: int, has_bos: bool,
                     window_bos: str = "every") -> list[DocumentWindow]:
    """The sliding protocol's windows for one document, BOS placed per `window_bos` (`WINDOW_BOS`)."""
    if window_bos == "every":
        return authors_windows(n_doc_tokens, window, stride, has_bos)
    if window_bos != "first":
        raise ValueError(f"window_bos {window_bos!r} is not one of {', '.join(WINDOW_BOS)}.")
    shift = int(has_bos)  # sequence index j is document token j − shift
    return [DocumentWindow(max(w.begin - shift, 0), w.end - shift, w.first_scored - shift, has_bos and w.begin == 0)
            for w in sliding_windows(n_doc_tokens + shift, window, stride)]


class PositionBuckets:
    """NLL totals per bucket [k·width, (k+1)·width) of positions inside the window the model read;
    float64 sums, integer token counts."""

    def __init__(self, width: int):
        if width < 1:
            raise ValueError(f"position bucket width {width} must be ≥ 1.")
        self.width = width
        self.tokens = torch.zeros(0, dtype=torch.long)
        self.nll_sum = torch.zeros(0, dtype=torch.float64)

    def add(self, nll: torch.Tensor, first_position: int) -> None:
        """Token NLLs at consecutive window positions first_position, first_position + 1, …"""
        if nll.numel() == 0:
            return
        bucket = torch.arange(first_position, first_position + nll.numel()) // self.width
        size = max(int(bucket[-1]) + 1, self.tokens.numel())
        self.tokens = _grown(self.tokens, size) + torch.bincount(bucket, minlength=size)
        self.nll_sum = _grown(self.nll_sum, size).index_add(0, bucket, nll.detach().cpu().double())

    def rows(self) -> list[dict]:
        """One row per non-empty bucket: position_start, position_end (exclusive), tokens, nll_sum, mean_nll."""
        return [dict(position_start=k * self.width, position_end=(k + 1) * self.width, tokens=int(n),
                     nll_sum=float(total), mean_nll=float(total) / int(n))
                for k, (n, total) in enumerate(zip(self.tokens.tolist(), self.nll_sum.tolist())) if n]


def _grown(values: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([values, values.new_zeros(size - values.numel())]) if size > values.numel() else values


def sliding_scores(model, doc_ids: torch.Tensor, window: int, stride: int, bos_id: int | None,
                   chunk_size: int | None = None, before_window: Callable[[int], None] | None = None, *,
                   window_bos: str = "every", positions: PositionBuckets | None = None,
                   prefill_chunk: int | None = None) -> list[WindowScore]:
    """Sliding-window protocol over a whole document: one WindowScore per window, BOS per
    `window_bos`. `before_window(n_tokens)` is called before each window's forward (progress
    reporting); `positions`, when given, receives every scored token's NLL at its window position;
    `prefill_chunk`: each window's forward in chunks (`token_nll`)."""
    scores = []
    for w in document_windows(doc_ids.numel(), window, stride, bos_id is not None, window_bos):
        ids = w.input_ids(doc_ids, bos_id)
        if before_window:
            before_window(ids.numel())
        nll = token_nll(model, ids, w.first_scored_position, chunk_size, prefill_chunk)
        if positions is not None:
            positions.add(nll, w.first_scored_position)
        scores.append(WindowScore(nll.numel(), float(nll.double().sum())))
    return scores


def combine(scores: Sequence[WindowScore]) -> DocScore:
    """A document's totals from its windows: Σ tokens, Σ nll, and Σ of the window mean NLLs."""
    return DocScore(sum(s.scored_tokens for s in scores), sum(s.nll_sum for s in scores), len(scores),
                    sum(s.mean_nll for s in scores))


def passes_for_lengths(lengths: Sequence[int], dynamic: bool, original_ctx: int) -> list[tuple[int, list[int]]]:
    """Which forward passes serve which truncated lengths: [(pass_length, lengths served)].

    Static methods: one pass at the largest length serves all. Dynamic methods: lengths ≤ L share
    one pass (the scale is 1 there: identical to base), every length above L gets its own pass."""
    lengths = sorted(set(lengths))
    if not lengths:
        return []
    if not dynamic:
        return [(lengths[-1], lengths)]
    short = [n for n in lengths if n <= original_ctx]
    plan = [(short[-1], short)] if short else []
    return plan + [(n, [n]) for n in lengths if n > original_ctx]


# ---------------------------------------------------------------------------------------------
# The task: methods × documents × lengths into the result store
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PerplexityTask:
    dataset: str
    protocol: str  # "truncated" | "sliding"
    lengths: tuple[int, ...]
    stride: int = 256  # sliding only; recorded as 0 for truncated rows
    chunk_size: int | None = None
    window_bos: str = "every"  # sliding only (WINDOW_BOS); truncated rows record "first"
    position_bucket: int | None = None  # loss-by-position bucket width; None: original context // 8
    prefill_chunk: int | str | None = None  # chunked prefill: tokens, "auto" or "off"/None (`prefill`)

    @property
    def row_window_bos(self) -> str:
        """The `window_bos` column: truncated has one window with BOS at the document start."""
        return self.window_bos if self.protocol == "sliding" else "first"

    def bucket_width(self, spec) -> int:
        return self.position_bucket or max(1, spec.original_ctx // 8)


def window_tokens(task: PerplexityTask, spec, n_tokens: int, lengths: Sequence[int]) -> int:
    """Tokens the forwards of one document's cell process (BOS included in `n_tokens`): the
    truncated passes (`passes_for_lengths`), or every sliding window of every length."""
    if task.protocol == "truncated":
        return sum(length for length, _ in passes_for_lengths(lengths, spec.is_dynamic, spec.original_ctx))
    return sum(w.end - w.begin for length in lengths for w in sliding_windows(n_tokens, length, task.stride))


class PerplexityCells(Task):
    """Cells: (spec, document) for one protocol over all lengths, document-major (an interrupted
    run has whole documents, every method). Rows go to perplexity_docs.csv as soon as a pass
    finishes; perplexity.csv is re-aggregated after each cell in a single process (by rank 0
    after the merge otherwise). For truncated lengths ≤ L, dynamic methods reuse an earlier pass at
    scale 1 (base) of the same document."""

    name = "perplexity"
    table = "perplexity_docs"

    def __init__(self, model_name: str, bos_id: int | None, specs, docs, task: PerplexityTask, seed: int = 0):
        self.model_name, self.bos_id, self.specs, self.task, self.seed = model_name, bos_id, list(specs), task, seed
        self.docs = {doc.doc_id: doc for doc in docs}
        self._unit_scale_passes: dict[str, torch.Tensor] = {}  # doc_id → per-token NLL at scale 1

    def _base_row(self, spec, doc) -> dict:
        task = self.task
        return dict(key_row(self.model_name, spec), dataset=task.dataset, doc_id=doc.doc_id,
                    doc_tokens=int(doc.ids.numel()), protocol=task.protocol, window_bos=task.row_window_bos,
                    stride=task.stride if task.protocol == "sliding" else 0, bucket_width=task.bucket_width(spec))

    def cells(self, session) -> list[Cell]:
        task, cells = self.task, []
        for doc in self.docs.values():
            n_tokens = int(doc.ids.numel()) + (self.bos_id is not None)
            for spec in self.specs:
                cells.append(Cell(self.name, spec, (doc.doc_id, task.protocol),
                                  cell_name("perplexity", self.model_name, spec.short, task.dataset, doc.doc_id,
                                            task.protocol, *([f"bos={task.window_bos}"]
                                                             if task.protocol == "sliding" else [])),
                                  tokens=window_tokens(task, spec, n_tokens, task.lengths),
                                  length=max(task.lengths), chunkable=True))
        return cells

    def pending(self, cell: Cell, done: set) -> list[int]:
        base_row = self._base_row(cell.spec, self.docs[cell.unit[0]])
        return [n for n in self.task.lengths if cell_key(self.table, dict(base_row, context_length=n)) not in done]

    def run(self, cell: Cell, missing: list[int], session) -> dict:
        doc, spec = self.docs[cell.unit[0]], cell.spec
        if doc.doc_id not in self._unit_scale_passes:
            self._unit_scale_passes.clear()  # keep only the current document's pass
        base_row = self._base_row(spec, doc)
        progress = session.progress
        progress.stage("prefilled")
        try:
            if self.task.protocol == "truncated":
                _truncated_cell(session.model, self.bos_id, spec, doc, missing, self.task, base_row, session.store,
                                progress, self._unit_scale_passes)
            else:
                _sliding_cell(session.model, self.bos_id, doc, missing, self.task, base_row, session.store, progress)
        finally:
            if not session.shard.active:
                session.store.derive("perplexity", "perplexity_docs",
                                     lambda docs: aggregate_perplexity(docs, seed=self.seed))
                session.store.derive("perplexity_positions", "perplexity_positions_docs", aggregate_positions)
        return {}


class TemperatureSweepCells(PerplexityCells):
    """Perplexity cells of YaRN at each factor with attention_factor √(1/t) over the temperature
    grid (`--temperatures`), plus YaRN with its own formula (paper §3.4, Fig. 2)."""

    name = "temperature-sweep"


def run_perplexity(model, model_name: str, bos_id: int | None, specs, docs, task: PerplexityTask, store, manifest,
                   seed: int = 0, show_progress: bool = True, shard=None) -> list[str]:
    """Evaluate every (spec, document) cell not already in the store through the runner; return
    the failed cells (library entry point; the CLI builds the same cells from its arguments)."""

    session = Session(model, None, model_name, store, manifest, shard or Shard(), show_progress)
    cells_task = PerplexityCells(model_name, bos_id, resolve_specs(model, specs), docs, task, seed)
    return run_cells(Plan(cells_task.cells(session)), [cells_task], session)


def _truncated_cell(model, bos_id, spec, doc, missing, task, base_row, store, progress: CellProgress,
                    unit_scale_passes) -> None:
    for pass_length, served in passes_for_lengths(missing, spec.is_dynamic, spec.original_ctx):
        reusable = unit_scale_passes.get(doc.doc_id)
        # native's shipped RoPE at l ≤ L need not be base (longrope's short factors): never shared
        at_unit_scale = spec.method == "base" or (
            spec.is_dynamic and spec.method != "native" and pass_length <= spec.original_ctx)
        if at_unit_scale and reusable is not None and reusable.shape[0] >= pass_length - 1:
            nll = reusable
        else:
            progress.expect(pass_length)
            with progress.layers(model):
                nll = truncated_nll(model, doc.ids, pass_length, bos_id, task.chunk_size,
                                    prefill_chunk_for(model, task.prefill_chunk, pass_length, task.chunk_size))
            if at_unit_scale:
                unit_scale_passes[doc.doc_id] = nll
        rows, position_rows = [], []
        for length, score in truncated_curve(nll, served).items():
            doc_score = DocScore(score.scored_tokens, score.nll_sum, 1, score.mean_nll)
            rows.append(_doc_row(base_row, length, doc_score))
            positions = PositionBuckets(base_row["bucket_width"])
            positions.add(nll[: length - 1], first_position=1)
            position_rows += [dict(base_row, context_length=length, **r) for r in positions.rows()]
        store.append("perplexity_positions_docs", position_rows)
        store.append("perplexity_docs", rows)


def _doc_row(base_row: dict, length: int, score: DocScore) -> dict:
    return dict(base_row, context_length=length, scored_tokens=score.scored_tokens, nll_sum=score.nll_sum,
                n_windows=score.n_windows, window_nll_sum=score.window_nll_sum, ppl=score.ppl,
                ppl_paper=score.ppl_paper)


def _sliding_cell(model, bos_id, doc, missing, task, base_row, store, progress: CellProgress) -> None:
    has_bos = bos_id is not None
    progress.expect(sum(w.end - w.begin + int(w.bos) for window in missing
                        for w in document_windows(doc.ids.numel(), window, task.stride, has_bos, task.window_bos)))
    for window in missing:
        positions = PositionBuckets(base_row["bucket_width"])
        with progress.layers(model):
            scores = sliding_scores(model, doc.ids, window, task.stride, bos_id, task.chunk_size,
                                    window_bos=task.window_bos, positions=positions,
                                    prefill_chunk=prefill_chunk_for(model, task.prefill_chunk, window, task.chunk_size))
        store.append("perplexity_positions_docs",
                     [dict(base_row, context_length=window, **r) for r in positions.rows()])
        store.append("perplexity_docs", [_doc_row(base_row, window, combine(scores))])
