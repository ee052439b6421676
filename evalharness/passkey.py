"""Passkey retrieval: the YaRN paper's long-context test as a length × depth grid.

Protocol (YaRN paper, arXiv 2309.00071, §4.3.2 / Table 5, after Mohtashami & Jaggi's landmark-
attention test; text and rules as in `shared/PAPER.md`). The prompt is five lines joined by "\\n":

1. ``There is an important info hidden inside a lot of irrelevant text. Find it and memorize them.
   I will quiz you about the important information there.``
2. filler before the needle
3. ``The pass key is {k}. Remember it. {k} is the pass key.``
4. filler after the needle
5. ``What is the pass key? The pass key is``

The filler is a stream of the five sentences of ``The grass is green. The sky is blue. The sun is
yellow. Here we go. There and back again.`` repeated (each filler line starts at "The grass is
green."; n whole repetitions of the sentence are exactly ``" ".join([FILLER] * n)``, the authors'
text). Sizing (:func:`build_prompt`): BOS (when the tokenizer has one) + the prompt's tokens land
at most the target length and within a few tokens of it. The number of filler sentences is the
largest that fits; the last few tokens of slack are filled with the first words of the next
filler sentence at the end of the after-filler (word granularity, never splitting a word).

Depth d ∈ [0, 1] is the fraction of the filler's whole sentences placed before the needle:
``round(d · N)`` of N, so the needle always sits on a sentence boundary (the paper draws the depth
uniformly at random; this harness runs a grid of depths instead, so every depth is covered).

The key is a 5-digit integer (10000–99999; the authors' script draws 1–50000, the paper says
5 digits) from ``random.Random(cell_seed(seed, length, depth, trial))``: each cell's key is
reproducible on its own, independent of run order.

Scoring
-------
*Paper rule* (``generate=True``): greedy decoding of a few tokens; correct when the first
integer in the continuation (regex ``\\d+``) equals the key. Generation recomputes the full
forward at every step (no KV cache): a cache holds keys rotated at an earlier length's scale,
which is inconsistent for dynamic methods (PAPER.md, "known trap"); without a cache every step
rotates with the scale of its own length, for every method. Only the last position's hidden state
goes through the LM head (never the [T, vocab] logits). Decoding stops early once the first
integer is complete (a non-digit follows it): later tokens cannot change the score.

*Teacher-forced fast path* (default): one forward over prompt + key tokens; the LM head runs
only on the K+1 positions that predict the K key tokens and the token after them. Correct when
the argmax at every key position is the key's token and the first integer of the decoded key +
next-argmax text equals the key (so "12345" continued by "6" is wrong, as the paper's rule says).
This is exactly "greedy decoding emits the key's canonical tokens and the integer ends there".
For a dynamic method whose scale would change between the prompt length P and P+K (P+K > L), one
forward at length P+K would rotate every position with s = (P+K)/L, while greedy step i uses
s = (P+i)/L; the fast path then runs the K+1 forwards of lengths P, P+1, …, P+K (stopping at the
first wrong token), each as greedy decoding would — exact, at about the cost of generation.

The two rules can differ only when greedy reaches the right integer by a route the canonical
tokens do not describe: leading text before the digits (" is: 12345"), a non-canonical
tokenization of the same digits, or leading zeros ("012345" is 12345 to ``int``). Then the
fast path says wrong and the paper's rule says right.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .perplexity import NonFiniteError, decoder_hidden_states, logit_transform

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FILLER_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                    "There and back again.")
NEEDLE = "The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_MIN, KEY_MAX = 10000, 99999
ACCURACY_THRESHOLD = 0.8  # "passkey context": largest length with accuracy ≥ 80 %
DEPTH_DECIMALS = 6  # depths are rounded so they survive the CSV round trip (%.10g) exactly

_INTEGER = re.compile(r"\d+")

assert " ".join(FILLER_SENTENCES) == FILLER


class PasskeyError(ValueError):
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

    @property
    def needle_fraction(self) -> float:
        """Whole filler sentences before the needle / all whole filler sentences."""
        total = self.sentences_before + self.sentences_after
        return self.sentences_before / total if total else 0.0


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


def _integer_complete(text: str) -> bool:
    """True once the first integer can no longer grow (a non-digit follows a digit run)."""
    match = _INTEGER.search(text)
    return bool(match) and match.end() < len(text)


@dataclass(frozen=True)
class PasskeyScore:
    correct: bool
    continuation: str  # decoded greedy tokens (generate) or argmax tokens at the key positions (+1)
    token_ids: tuple[int, ...]
    forwards: int  # decoder forwards spent


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


def _last_argmax(model, ids: torch.Tensor) -> int:
    """Greedy next token after the 1-D sequence `ids`: full forward (no cache), head on the last
    position only."""
    hidden = decoder_hidden_states(model, ids.reshape(1, -1).to(_device(model)))[0, -1:]
    return int(_logits_at(model, hidden).argmax(-1)[0])


@torch.inference_mode()
def greedy_continuation(model, tokenizer, input_ids: torch.Tensor, max_new_tokens: int,
                        stop_when_integer_complete: bool = True) -> tuple[list[int], str, int]:
    """Greedy decoding without a KV cache: every step runs the decoder over the whole sequence, so
    dynamic methods rotate all keys with the scale of the current length. Returns (new token ids,
    decoded text, forwards). Stops at EOS, after `max_new_tokens`, or once the first integer of the
    text is complete (later tokens cannot change the paper's score)."""
    ids = input_ids.reshape(-1).long()
    eos = tokenizer.eos_token_id
    new: list[int] = []
    text = ""
    forwards = 0
    for _ in range(max_new_tokens):
        token = _last_argmax(model, ids)
        forwards += 1
        if eos is not None and token == eos:
            break
        new.append(token)
        ids = torch.cat([ids, torch.tensor([token], dtype=torch.long)])
        text = tokenizer.decode(new, skip_special_tokens=True)
        if stop_when_integer_complete and _integer_complete(text):
            break
    return new, text, forwards


def score_generate(model, tokenizer, prompt: PasskeyPrompt, max_new_tokens: int | None = None) -> PasskeyScore:
    """The paper's rule: greedy continuation (default K+2 tokens, K = key tokens), first integer."""
    steps = max_new_tokens or prompt.key_token_ids.numel() + 2
    new, text, forwards = greedy_continuation(model, tokenizer, prompt.input_ids, steps)
    return PasskeyScore(is_correct(text, prompt.passkey), text, tuple(new), forwards)


def _needs_stepwise(model, prompt_tokens: int, key_tokens: int) -> bool:
    """Whether the scale of the model's (dynamic) method changes between length P and P+K."""
    from .scaling import current_spec

    spec = current_spec(model)
    if spec is None or not spec.is_dynamic:
        return False
    return spec.scale_at(prompt_tokens) != spec.scale_at(prompt_tokens + key_tokens)


@torch.inference_mode()
def score_teacher_forced(model, tokenizer, prompt: PasskeyPrompt, exact_dynamic: bool = True) -> PasskeyScore:
    """Fast path: is greedy decoding's output the key, and does the integer end there?

    One forward over prompt + key tokens (P+K positions); only the K+1 hidden states at positions
    P−1 … P+K−1 go through the LM head. Correct iff argmax[i] == key[i] for i < K and the first
    integer of decode(key + [argmax[K]]) is the key. For dynamic methods whose scale differs
    between P and P+K (and `exact_dynamic`), greedy's steps are replayed instead: forwards of
    lengths P+i, i = 0 … K, each scoring its last position, stopping at the first wrong token.
    """
    key = prompt.key_token_ids.reshape(-1).long()
    ids = torch.cat([prompt.input_ids.reshape(-1).long(), key])
    P, K = prompt.input_ids.numel(), key.numel()
    if exact_dynamic and _needs_stepwise(model, P, K):
        predicted: list[int] = []
        for i in range(K + 1):
            predicted.append(_last_argmax(model, ids[: P + i]))
            if i < K and predicted[-1] != int(key[i]):
                break
        forwards = len(predicted)
    else:
        hidden = decoder_hidden_states(model, ids.reshape(1, -1).to(_device(model)))[0, P - 1 : P + K]
        predicted = _logits_at(model, hidden).argmax(-1).tolist()
        forwards = 1
    matches = len(predicted) == K + 1 and predicted[:K] == key.tolist()
    text = tokenizer.decode(predicted, skip_special_tokens=True)
    correct = matches and is_correct(text, prompt.passkey)
    return PasskeyScore(bool(correct), text, tuple(predicted), forwards)


def score_prompt(model, tokenizer, prompt: PasskeyPrompt, generate: bool = False) -> PasskeyScore:
    return score_generate(model, tokenizer, prompt) if generate else score_teacher_forced(model, tokenizer, prompt)


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------

def run_passkey(model, tokenizer, model_name: str, specs, lengths: Sequence[int], depths: int | Sequence[float],
                trials: int, seed: int, generate: bool, store, manifest, show_progress: bool = True) -> list[str]:
    """Score every (length, spec, depth, trial) cell not already in `store`; return the failed cells.

    Order: length-major (an interrupted run has whole lengths for every method), then spec, depth,
    trial. Prompts do not depend on the method and are built once per length. One row per prompt is
    appended to passkey.csv as soon as it is scored. A manifest cell is one (spec, length); when a
    prompt of it fails (OOM, NaN, RuntimeError, a length too short for the fixed text) the cell is
    recorded as failed with the error, its remaining prompts are skipped (they would fail the same
    way), and the run continues with the next cell; a rerun retries the missing rows.
    """
    from tqdm.auto import tqdm

    from .results import CELL_ERRORS, key_row, record_failure
    from .scaling import apply_scaling

    depth_values = depth_grid(depths)
    points = [(d, t) for d in depth_values for t in range(int(trials))]
    failed: list[str] = []
    scoring = "generate" if generate else "teacher-forced"
    done = store.done("passkey")
    plan = []
    for length in lengths:
        for spec in specs:
            resolved = apply_scaling(model, spec)
            key = key_row(model_name, resolved)
            missing = [(d, t) for d, t in points
                       if store.cell_key("passkey", dict(key, context_length=int(length), depth=d, trial=t,
                                                         seed=int(seed), scoring=scoring)) not in done]
            if missing:
                plan.append((int(length), spec, missing))
    bar = tqdm(total=sum(len(m) for _, _, m in plan), unit="prompt", disable=not show_progress,
               dynamic_ncols=True, desc="passkey")
    prompts: dict[tuple[int, float, int], PasskeyPrompt] = {}
    try:
        for length, spec, missing in plan:
            if prompts and next(iter(prompts))[0] != length:
                prompts.clear()  # keep only the current length's prompts in memory
            resolved = apply_scaling(model, spec)
            key = key_row(model_name, resolved)
            cell = f"passkey|{model_name}|{resolved.short}|{length}|{scoring}"
            bar.set_description(f"passkey {resolved.short} {length}")
            n_correct = n_rows = 0
            try:
                for depth, trial in missing:
                    prompt = prompts.get((length, depth, trial))
                    if prompt is None:
                        prompt = build_prompt(tokenizer, length, depth, seed=seed, trial=trial)
                        prompts[(length, depth, trial)] = prompt
                    score = score_prompt(model, tokenizer, prompt, generate)
                    store.append("passkey", [dict(key, context_length=length, prompt_tokens=prompt.prompt_tokens,
                                                  depth=depth, trial=trial, seed=int(seed), scoring=scoring,
                                                  passkey=prompt.passkey,
                                                  continuation=score.continuation, correct=score.correct)])
                    n_rows += 1
                    n_correct += score.correct
                    bar.update(1)
                    bar.set_postfix(acc=f"{n_correct / n_rows:.2f}")
                manifest.cell(cell, "done", rows=n_rows, correct=n_correct, scoring=scoring)
            except CELL_ERRORS as exc:
                record_failure(manifest, failed, cell, exc)
    finally:
        bar.close()
    return failed


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def summarize_passkey(frame):
    """Per (model, method, factor, original_ctx, context_length): `accuracy` (fraction correct)
    and `n` (prompts), sorted by key and length."""
    import pandas as pd

    from .results import KEY_COLUMNS

    columns = KEY_COLUMNS + ["context_length", "accuracy", "n"]
    if frame is None or len(frame) == 0:
        return pd.DataFrame(columns=columns)
    data = frame.copy()
    data["correct"] = data["correct"].map(_as_bool).astype(float)
    groups = data.groupby(KEY_COLUMNS + ["context_length"], sort=True, dropna=False)["correct"]
    out = groups.agg(accuracy="mean", n="size").reset_index()
    out["n"] = out["n"].astype(int)
    return out[columns]


def passkey_context(frame, threshold: float = ACCURACY_THRESHOLD):
    """Per (model, method, factor, original_ctx): `passkey_context` = the largest context length
    whose accuracy is ≥ `threshold` (the paper's definition, 80 %; 0 when no length reaches it),
    `accuracy_at_context` at that length (NaN when none), and `max_length_tested`. Takes the raw
    passkey rows or the output of `summarize_passkey`."""
    import pandas as pd

    from .results import KEY_COLUMNS

    summary = frame if "accuracy" in getattr(frame, "columns", []) else summarize_passkey(frame)
    columns = KEY_COLUMNS + ["passkey_context", "accuracy_at_context", "max_length_tested"]
    rows = []
    for key, group in summary.groupby(KEY_COLUMNS, sort=True, dropna=False):
        passing = group[group["accuracy"] >= threshold - 1e-12]
        if len(passing):
            best = passing.loc[passing["context_length"].idxmax()]
            context, accuracy = int(best["context_length"]), float(best["accuracy"])
        else:
            context, accuracy = 0, math.nan
        rows.append(dict(zip(KEY_COLUMNS, key), passkey_context=context, accuracy_at_context=accuracy,
                         max_length_tested=int(group["context_length"].max())))
    return pd.DataFrame(rows, columns=columns)
