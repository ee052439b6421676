"""Passkey retrieval (YaRN paper §4.3.2 / Table 5) as a length × depth grid: `build_prompt` (the
paper's prompt, never longer than the target length), a seeded 5-digit key per cell, and the paper's
rule (greedy ≤ 10 tokens; correct when the first integer equals the key), with the KV cache used only
while the RoPE scale cannot change (`cache_reusable`).

Protocol and cost: docs/tasks-and-protocols.md#passkey
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import EvalHarnessError
from ..methods import native_type_is_dynamic
from ..parallel import Shard
from ..perplexity.engine import NonFiniteError, logit_transform
from ..plan import Cell, Plan, cell_name
from ..prefill import backbone, cache_argument, last_hidden, prefill_chunk_for
from ..progress import CellProgress
from ..rerotate import dynamic_rotary, rerotating_cache
from ..results import cell_key, key_row
from ..runner import Session, Task, resolve_specs, run_cells
from ..scaling import current_spec, shipped_rope

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FILLER_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                    "There and back again.")
NEEDLE = "The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_MIN, KEY_MAX = 10000, 99999
MAX_NEW_TOKENS = 10  # the paper's rule: greedy continuation of at most 10 new tokens
SCORING = "paper"  # the `scoring` value of rows scored by that rule (part of a row's cell key)
# ... by that rule on a dynamic method decoded with --dynamic-cache rerotate (another series).
SCORING_REROTATE = "paper-rerotate"
DEPTH_DECIMALS = 6  # depths are rounded so they survive the CSV round trip (%.10g) exactly

_INTEGER = re.compile(r"\d+")

assert " ".join(FILLER_SENTENCES) == FILLER


class PasskeyError(EvalHarnessError, ValueError):
    """A prompt cannot be built as asked (target too short, tokenizer boundary problem)."""


# ---------------------------------------------------------------------------------------------
# Keys and depths
# ---------------------------------------------------------------------------------------------

def cell_seed(seed: int, length: int, depth: float, trial: int) -> int:
    """A 64-bit seed for one (seed, length, depth, trial) cell: SHA-256 of their text form, so a
    cell's key does not depend on which other cells ran before it (or on PYTHONHASHSEED)."""
    text = f"passkey|{int(seed)}|{int(length)}|{round(float(depth), DEPTH_DECIMALS):.{DEPTH_DECIMALS}f}|{int(trial)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def passkey_for(seed: int, length: int, depth: float, trial: int) -> int:
    """The cell's 5-digit pass key, uniform in [10000, 99999]."""
    return random.Random(cell_seed(seed, length, depth, trial)).randint(KEY_MIN, KEY_MAX)


def depth_grid(depths: int | Sequence[float]) -> list[float]:
    """`n` → n evenly spaced depths 0, 1/(n−1), …, 1 (n = 1 → [0.5]); a sequence → itself.
    Rounded to 6 decimals so the CSV round trip (and resume) is exact."""
    if isinstance(depths, (int,)) and not isinstance(depths, bool):
        if depths < 1:
            raise ValueError(f"depths={depths}: need at least one depth.")
        values = [0.5] if depths == 1 else [i / (depths - 1) for i in range(depths)]
    else:
        values = [float(d) for d in depths]
    for d in values:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"depth {d} is outside [0, 1].")
    return [round(d, DEPTH_DECIMALS) for d in values]


# ---------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PasskeyPrompt:
    """One passkey prompt, tokenized.

    input_ids:      1-D LongTensor, BOS first when the tokenizer has one; len == prompt_tokens.
    key_token_ids:  1-D LongTensor, the tokens of " {passkey}" as they continue the prompt.
    sentences_before / sentences_after: whole filler sentences before / after the needle;
    extra_words:    words of one more filler sentence at the end of the after-filler (slack).
    key_tokenization: "joint" (the answer's tokens from tokenizing prompt + answer together) or
                    "standalone" (fallback when the joint form re-tokenizes the prompt's end).
    """

    text: str
    input_ids: torch.Tensor
    passkey: int
    key_token_ids: torch.Tensor
    depth: float
    target_length: int
    prompt_tokens: int
    sentences_before: int
    sentences_after: int
    extra_words: int
    key_tokenization: str = "joint"

    @property
    def answer(self) -> str:
        return f" {self.passkey}"


def filler_text(n_sentences: int, extra_words: int = 0) -> str:
    """The first `n_sentences` sentences of the repeated filler, then the first `extra_words`
    words of the next one. n = 5m gives " ".join([FILLER] * m)."""
    parts = [FILLER_SENTENCES[i % len(FILLER_SENTENCES)] for i in range(n_sentences)]
    if extra_words:
        words = FILLER_SENTENCES[n_sentences % len(FILLER_SENTENCES)].split(" ")
        parts.append(" ".join(words[:extra_words]))
    return " ".join(parts)


def prompt_text(passkey: int, sentences_before: int, sentences_after: int, extra_words: int = 0) -> str:
    """The paper's five lines joined by "\\n"."""
    return "\n".join([
        INTRO,
        filler_text(sentences_before),
        NEEDLE.format(k=passkey),
        filler_text(sentences_after, extra_words),
        QUESTION,
    ])


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (BOS is prepended by the callers)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _max_fitting(count: Callable[[int], int], target: int, guess: int, per_unit: float,
                 upper: int | None = None) -> int:
    """Largest n in [0, upper] with count(n) ≤ target, for count nondecreasing in n and
    count(0) ≤ target. Starts at an arithmetic `guess`, gallops by the estimated number of units
    (`per_unit` tokens each) to bracket the answer, then bisects: with a good guess, 2–3 calls."""
    top = math.inf if upper is None else upper
    fits = lambda n: n <= top and count(n) <= target  # noqa: E731
    guess = int(min(max(0, guess), top))
    if fits(guess):
        lo, step = guess, 1
        while True:
            hi = lo + step
            if not fits(hi):
                break
            lo, step = hi, step * 2
    else:
        hi = guess
        step = max(1, math.ceil((count(guess) - target) / max(per_unit, 1e-9)))
        while True:
            lo = max(0, hi - step)
            if lo == 0 or fits(lo):
                break
            hi, step = lo, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def build_prompt(tokenizer, length: int, depth: float, *, seed: int = 0, trial: int = 0,
                 passkey: int | None = None) -> PasskeyPrompt:
    """The passkey prompt of `length` tokens (BOS included; never more, a few less at most) with
    the needle at `depth` (fraction of the filler sentences before it).

    Sizing tokenizes the full prompt only a handful of times: the fixed text (no filler) and a
    20-sentence filler sample give the tokens per sentence; the arithmetic estimate is verified
    and corrected by `_max_fitting` (gallop + bisection over whole sentences), then the same for
    the trailing words. Every count is an exact tokenization of the complete prompt, so merges
    across sentence and line boundaries are accounted for.
    """
    length = int(length)
    depth = round(float(depth), DEPTH_DECIMALS)
    if not 0.0 <= depth <= 1.0:
        raise PasskeyError(f"depth {depth} is outside [0, 1].")
    if passkey is None:
        passkey = passkey_for(seed, length, depth, trial)
    bos = tokenizer.bos_token_id
    n_bos = 0 if bos is None else 1

    def split(n: int) -> tuple[int, int]:
        before = int(math.floor(depth * n + 0.5))
        return before, n - before

    cache: dict[tuple[int, int], list[int]] = {}

    def ids_for(n: int, words: int) -> list[int]:
        if (n, words) not in cache:
            cache[(n, words)] = _encode(tokenizer, prompt_text(passkey, *split(n), words))
        return cache[(n, words)]

    fixed = n_bos + len(ids_for(0, 0))
    if fixed > length:
        raise PasskeyError(f"target length {length} is shorter than the prompt without filler "
                           f"({fixed} tokens with BOS); use a length > {fixed}.")
    sample = 4 * len(FILLER_SENTENCES)
    per_sentence = max(len(_encode(tokenizer, " " + filler_text(sample))) / sample, 1e-3)
    n = _max_fitting(lambda m: n_bos + len(ids_for(m, 0)), length, int((length - fixed) / per_sentence),
                     per_sentence)
    before, after = split(n)
    n_words = len(FILLER_SENTENCES[after % len(FILLER_SENTENCES)].split(" "))
    words = _max_fitting(lambda w: n_bos + len(ids_for(n, w)), length, 0, per_sentence / n_words,
                         upper=n_words - 1)
    body = ids_for(n, words)
    text = prompt_text(passkey, before, after, words)
    key_ids, how = _continuation_ids(tokenizer, text, body, f" {passkey}")
    input_ids = torch.tensor(([bos] if n_bos else []) + body, dtype=torch.long)
    assert input_ids.numel() <= length
    return PasskeyPrompt(text=text, input_ids=input_ids, passkey=int(passkey), key_token_ids=key_ids,
                         depth=depth, target_length=length, prompt_tokens=int(input_ids.numel()),
                         sentences_before=before, sentences_after=after, extra_words=words,
                         key_tokenization=how)


def _continuation_ids(tokenizer, text: str, prompt_ids: list[int], answer: str) -> tuple[torch.Tensor, str]:
    """Tokens of `answer` as they continue `text`: tokenize text + answer together and keep what
    follows the prompt's tokens (so merges across the boundary are seen), after checking that the
    prompt part tokenizes exactly as the prompt alone. If it does not (a tokenizer merging across
    the boundary), the model never sees the joint form: fall back to the answer tokenized alone,
    provided it decodes back to the answer."""
    joint = _encode(tokenizer, text + answer)
    if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        return torch.tensor(joint[len(prompt_ids):], dtype=torch.long), "joint"
    alone = _encode(tokenizer, answer)
    if not alone or tokenizer.decode(alone).strip() != answer.strip():
        raise PasskeyError(f"cannot find the tokens of {answer!r} as a continuation of the prompt with "
                           f"{type(tokenizer).__name__}.")
    return torch.tensor(alone, dtype=torch.long), "standalone"


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def first_integer(text: str) -> int | None:
    """The first integer (regex \\d+) in `text`, or None."""
    match = _INTEGER.search(text)
    return int(match.group()) if match else None


def is_correct(continuation: str, passkey: int) -> bool:
    """The paper's rule: the first integer of the continuation equals the key."""
    return first_integer(continuation) == int(passkey)


def outcome_decided(text: str) -> bool:
    """True once more generated text cannot change the first integer: a digit run is followed by
    a character that is neither a digit nor U+FFFD (the decoder's mark for an incomplete UTF-8
    sequence, which the next token may complete into a digit). Relies on the decoded text of more
    tokens extending the decoded text of fewer, which holds for byte-level BPE and SentencePiece
    decoding up to that mark."""
    match = _INTEGER.search(text)
    return bool(match) and match.end() < len(text) and text[match.end()] != "\ufffd"


@dataclass(frozen=True)
class GreedyDecode:
    """A greedy continuation. `forwards`: decoder calls; `cached_steps`: how many of them were
    one-token steps on the KV cache (the others ran over the whole sequence)."""

    token_ids: tuple[int, ...]
    text: str
    forwards: int
    cached_steps: int


@dataclass(frozen=True)
class PasskeyScore:
    """correct: the paper's rule on `continuation` (what greedy decoding produced).
    key_forced_argmax: with the key's tokens fed in after the prompt, the argmax at every key
    position is the next key token (None when the decode stopped before settling it)."""

    correct: bool
    continuation: str
    token_ids: tuple[int, ...]
    key_forced_argmax: bool | None
    forwards: int
    cached_steps: int


def _device(model) -> torch.device:
    """Where input ids go: the input embeddings' device (with a device map the LM head may sit on
    another GPU), as in perplexity.token_nll."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return (embeddings if embeddings is not None else model.get_output_embeddings()).weight.device


def _logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a few hidden states [N, H] through the LM head and the model's own logit
    transform (softcap, scale); raises NonFiniteError on NaN/inf."""
    head = model.get_output_embeddings()
    logits = logit_transform(model)(head(hidden.to(head.weight.device)).float())
    if not torch.isfinite(logits).all():
        raise NonFiniteError(f"{int((~torch.isfinite(logits)).sum())} logits are NaN or infinite.")
    return logits


def _decoder_last_hidden(model, ids: torch.Tensor, cache=None, use_cache: bool = False,
                         prefill_chunk: int | None = None):
    """(final hidden state of the last position [1, H], the KV cache or None). `ids` [1, n] are
    the whole sequence (cache None) or the tokens after the cached ones. `prefill_chunk` (whole
    sequence, no cache given): the forward runs in chunks (`prefill.last_hidden`)."""
    if cache is None and prefill_chunk is not None and prefill_chunk < ids.shape[1]:
        hidden, filled = last_hidden(model, ids.to(_device(model)), prefill_chunk)
        return hidden, filled if use_cache else None
    kwargs = {cache_argument(model): cache} if cache is not None else {}
    out = backbone(model)(input_ids=ids.to(_device(model)), use_cache=use_cache, **kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if not use_cache:
        return hidden[0, -1:], None
    new_cache = getattr(out, "cache", None)
    return hidden[0, -1:], new_cache if new_cache is not None else getattr(out, "past_key_values", None)


def cache_reusable(model, built_at: int, length: int) -> bool:
    """Whether keys cached by a forward that spanned `built_at` positions are rotated as a forward
    spanning `length` positions would rotate them.

    Static methods: always (the rotation does not depend on the length). Dynamic methods (and
    `native` with a length-dependent shipped type) rotate with the scale of the forward's length,
    which is 1 up to L and grows past it (`ScalingSpec.scale_at`): the cache is reusable iff
    s(built_at) == s(length), i.e. while both lengths are ≤ L. Past L the scale changes with every
    token, so every greedy step needs a full forward (YaRN paper App. B.3, the KV-cache trap).
    Without an evalharness spec (rotary modules as loaded), a length-dependent shipped type: never.
    """

    spec = current_spec(model)
    if spec is None:
        return not native_type_is_dynamic(shipped_rope(model.config).rope_type)
    if not spec.is_dynamic:
        return True
    return spec.scale_at(built_at) == spec.scale_at(length)


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _stop_tokens(model, tokenizer) -> set[int]:
    """The ids that end generation, as `model.generate` reads them: the generation config's
    eos_token_id (int or list), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.inference_mode()
def greedy_decode(model, tokenizer, input_ids: torch.Tensor, max_new_tokens: int = MAX_NEW_TOKENS,
                  stop_when_decided: bool = True, dynamic_cache: str = "recompute",
                  prefill_chunk: int | None = None, progress: CellProgress | None = None) -> GreedyDecode:
    """Greedy decoding as `model.generate(do_sample=False, max_new_tokens=...)` does it, with the
    KV cache wherever the cache holds what a full forward would compute.

    Step i (0-based) predicts token i from a forward spanning P + i positions (P = prompt tokens).
    Step 0 is the prefill over the prompt. A later step feeds only the previous token on the cache
    when `cache_reusable(model, built_at, P + i)` (always for static methods, so the rule costs one
    prefill + ≤ max_new_tokens − 1 one-token steps); otherwise it runs the whole sequence without
    cache, so a dynamic method rotates every key with the scale of the current length, as a
    cache-free `generate` does. When the KV cache does not fit in memory (OutOfMemoryError in a
    forward that keeps it), that forward is redone without cache and the remaining steps are full
    forwards: same tokens, more time. Only the last position goes through the LM head. Stops at a stop
    token (not kept), after `max_new_tokens`, or (when `stop_when_decided`) once
    `outcome_decided`: the paper's score can no longer change, and the tokens are a prefix of
    what `generate` returns.

    `dynamic_cache="rerotate"` (a dynamic evalharness method): the prefill fills a
    `rerotate.RerotatingCache` and every later step is a one-token step on it, its cached keys
    re-rotated to the scale of the current length (the YaRN paper's kv-caching advice for dynamic
    scaling; not equal to a cache-free `generate` past L, see `rerotate`).

    `prefill_chunk` C: every full forward (the prefill, and each step where the cache cannot be
    reused) runs in chunks of C tokens through a KV cache (`prefill`), except the re-rotating
    prefill; the tokens are those of the one-shot forwards up to rounding.

    `progress` (`progress.CellProgress`): the prompt's tokens as the prefill runs them (layer by
    layer, chunk by chunk), then the tokens generated, one per step.
    """

    rerotate = dynamic_cache == "rerotate" and dynamic_rotary(model) is not None

    def reusable(built: int, n: int) -> bool:
        return rerotate or cache_reusable(model, built, n)

    ids = input_ids.reshape(1, -1).long()
    prompt_tokens = ids.shape[1]
    progress = progress or CellProgress()
    progress.stage("prefilled", prompt_tokens)
    stop = _stop_tokens(model, tokenizer)
    new: list[int] = []
    text = ""
    cache, built_at, cache_fits = None, 0, True
    forwards = cached_steps = 0
    for step in range(int(max_new_tokens)):
        length = prompt_tokens + step
        more = step + 1 < max_new_tokens
        hidden = None
        if cache is not None and reusable(built_at, length):
            try:
                hidden, cache = _decoder_last_hidden(model, ids[:, -1:], cache, use_cache=more)
                cached_steps += 1
            except torch.OutOfMemoryError:
                cache, cache_fits = None, False
        if hidden is None:
            keep = cache_fits and more and reusable(length, length + 1)
            with progress.layers(model) if step == 0 else nullcontext():
                try:
                    hidden, cache = _decoder_last_hidden(model, ids,
                                                         rerotating_cache(model) if keep and rerotate else None,
                                                         use_cache=keep, prefill_chunk=prefill_chunk)
                except torch.OutOfMemoryError:
                    if not keep:
                        raise
                    cache, cache_fits = None, False  # the KV cache does not fit: full forwards from here
                if hidden is None:  # retried outside the handler, so the failed forward's tensors are freed
                    _free_accelerator_memory()
                    if step == 0:  # the prefill again, from zero
                        progress.stage("prefilled", prompt_tokens)
                    hidden, _ = _decoder_last_hidden(model, ids, prefill_chunk=prefill_chunk)
            built_at = length
        if step == 0:
            progress.stage("generated", max_new_tokens)
        forwards += 1
        token = int(_logits_at(model, hidden).argmax(-1)[0])
        if token in stop:
            break
        new.append(token)
        progress.advance(1)
        ids = torch.cat([ids, torch.tensor([[token]], dtype=torch.long)], dim=1)
        text = tokenizer.decode(new, skip_special_tokens=True)
        if stop_when_decided and outcome_decided(text):
            break
    return GreedyDecode(tuple(new), text, forwards, cached_steps)


def key_forced_argmax(token_ids: Sequence[int], key_token_ids: Sequence[int]) -> bool | None:
    """Whether, with the key's K tokens fed in after the prompt, the argmax at each of the K
    positions is the next key token — read off the greedy tokens: feeding key[:i] is feeding what
    greedy produced as long as greedy's first i tokens are key[:i], so the check holds iff greedy's
    first K tokens are the key's. None when greedy stopped (at `max_new_tokens`) on a strict prefix
    of the key."""
    key = [int(k) for k in key_token_ids]
    got = [int(t) for t in token_ids[: len(key)]]
    if got != key[: len(got)]:
        return False
    return True if len(got) == len(key) else None


def scoring_for(spec, dynamic_cache: str = "recompute") -> str:
    """The `scoring` value of a spec's rows: SCORING, or SCORING_REROTATE for a dynamic evalharness
    method decoded on the re-rotated KV cache (its continuations past L are not what cache-free
    `generate` gives, so its rows form their own series)."""
    rerotated = dynamic_cache == "rerotate" and spec.is_dynamic and spec.method != "native"
    return SCORING_REROTATE if rerotated else SCORING


def score_prompt(model, tokenizer, prompt: PasskeyPrompt, max_new_tokens: int = MAX_NEW_TOKENS,
                 dynamic_cache: str = "recompute", prefill_chunk: int | None = None,
                 progress: CellProgress | None = None) -> PasskeyScore:
    """The paper's rule on one prompt: greedy continuation of ≤ `max_new_tokens` tokens, correct
    when its first integer equals the key. `prefill_chunk`, `progress`: as `greedy_decode`."""
    decode = greedy_decode(model, tokenizer, prompt.input_ids, max_new_tokens, dynamic_cache=dynamic_cache,
                           prefill_chunk=prefill_chunk, progress=progress)
    return PasskeyScore(is_correct(decode.text, prompt.passkey), decode.text, decode.token_ids,
                        key_forced_argmax(decode.token_ids, prompt.key_token_ids.tolist()),
                        decode.forwards, decode.cached_steps)


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------

def passkey_row(key: dict, prompt: PasskeyPrompt, score: PasskeyScore, trial: int, seed: int,
                scoring: str = SCORING) -> dict:
    """One passkey.csv row: the method's key columns, the prompt's cell, the score."""
    return dict(key, context_length=prompt.target_length, prompt_tokens=prompt.prompt_tokens, depth=prompt.depth,
                trial=int(trial), seed=int(seed), scoring=scoring, passkey=prompt.passkey,
                continuation=score.continuation, correct=score.correct, key_forced_argmax=score.key_forced_argmax)


class PasskeyCells(Task):
    """Cells: one prompt each, (spec, length, depth, trial), length-major (an interrupted run has
    whole lengths for every method), then spec, depth, trial. Prompts do not depend on the method
    and are built once per length. Each prompt's row is appended to passkey.csv as soon as it is
    scored; a prompt whose scoring fails (out of memory, NaN logits) is a failed cell, and a rerun
    retries it. Memory: the greedy decode keeps a KV cache of up to length + MAX_NEW_TOKENS."""

    name = "passkey"
    table = "passkey"

    def __init__(self, model_name: str, tokenizer, specs, lengths: Sequence[int], depths: int | Sequence[float],
                 trials: int, seed: int, dynamic_cache: str = "recompute", prefill_chunk: int | str | None = None):
        self.model_name, self.tokenizer, self.specs = model_name, tokenizer, list(specs)
        self.dynamic_cache, self.prefill_chunk = dynamic_cache, prefill_chunk
        self.lengths, self.depths, self.trials = [int(n) for n in lengths], depth_grid(depths), int(trials)
        self.seed = int(seed)
        self._prompts: dict[tuple[int, float, int], PasskeyPrompt] = {}

    def _row_key(self, spec, length: int, depth: float, trial: int) -> dict:
        return dict(key_row(self.model_name, spec), context_length=length, depth=depth, trial=trial, seed=self.seed,
                    scoring=scoring_for(spec, self.dynamic_cache))

    def cells(self, session) -> list[Cell]:
        cells = []
        for length in self.lengths:
            for spec in self.specs:
                for depth in self.depths:
                    for trial in range(self.trials):
                        name = cell_name("passkey", self.model_name, spec.short, length,
                                         scoring_for(spec, self.dynamic_cache),
                                         f"depth={depth:g}", f"trial={trial}")
                        cells.append(Cell(self.name, spec, (length, depth, trial), name, tokens=length,
                                          length=length + MAX_NEW_TOKENS, kv_cache=True,
                                          chunkable=scoring_for(spec, self.dynamic_cache) == SCORING))
        return cells

    def pending(self, cell: Cell, done: set) -> bool:
        return cell_key(self.table, self._row_key(cell.spec, *cell.unit)) not in done

    def _prompt(self, length: int, depth: float, trial: int) -> PasskeyPrompt:
        if self._prompts and next(iter(self._prompts))[0] != length:
            self._prompts.clear()  # keep only the current length's prompts in memory
        key = (length, depth, trial)
        if key not in self._prompts:
            self._prompts[key] = build_prompt(self.tokenizer, length, depth, seed=self.seed, trial=trial)
        return self._prompts[key]

    def run(self, cell: Cell, pending, session) -> dict:
        length, depth, trial = cell.unit
        prompt = self._prompt(length, depth, trial)
        chunk = prefill_chunk_for(session.model, self.prefill_chunk, prompt.prompt_tokens + MAX_NEW_TOKENS,
                                  kv_cache=True)
        score = score_prompt(session.model, self.tokenizer, prompt, dynamic_cache=self.dynamic_cache,
                             prefill_chunk=chunk, progress=session.progress)
        session.store.append(self.table, [passkey_row(key_row(self.model_name, cell.spec), prompt, score, trial,
                                                      self.seed, scoring_for(cell.spec, self.dynamic_cache))])
        return {"correct": bool(score.correct), "forwards": score.forwards, "cached_steps": score.cached_steps}


def run_passkey(model, tokenizer, model_name: str, specs, lengths: Sequence[int], depths: int | Sequence[float],
                trials: int, seed: int, store, manifest, show_progress: bool = True, shard=None,
                dynamic_cache: str = "recompute") -> list[str]:
    """Score every (spec, length, depth, trial) prompt not already in `store` through the runner;
    return the failed cells (library entry point; the CLI builds the same cells)."""

    session = Session(model, tokenizer, model_name, store, manifest, shard or Shard(), show_progress)
    grid = PasskeyCells(model_name, tokenizer, resolve_specs(model, specs), lengths, depths, trials, seed,
                        dynamic_cache)
    return run_cells(Plan(grid.cells(session)), [grid], session)
