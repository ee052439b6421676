"""Shared test setup: offline Hugging Face libraries, an isolated harness cache, the tiny random
model, small text corpora written on the fly, the environment for subprocess runs, and the wheel
of this checkout (built once per session).

The offline variables are set here, before any test module imports `datasets` or
`huggingface_hub` (both read them at import time): no test touches the network.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def write_corpus(folder: Path, n_docs: int, words: str, n_words, seed: int = 0) -> Path:
    """`n_docs` .txt files of words drawn (seeded per document: random.Random(seed + i)) from
    `words`; `n_words` is a count or a function of the document index."""
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = words.split()
    for i in range(n_docs):
        rng = random.Random(seed + i)
        count = n_words(i) if callable(n_words) else n_words
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(vocabulary) for _ in range(count)))
    return folder


def tiny_llama(seed: int = 0, rope_parameters: dict | None = None, max_position_embeddings: int = 64,
               **overrides):
    """A seeded 2-layer Llama in eval mode (vocab 97, hidden 64, 4 heads / 2 KV heads, head_dim 16)
    with plain RoPE (rope_theta 10000) unless `rope_parameters` says otherwise; native context 64."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=max_position_embeddings,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0}, **overrides,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def make_byte_tokenizer(reverse: bool = False, model_max_length: int = 1_000_000):
    """Byte-level BPE with the 256-byte alphabet as vocab and no merges: 1 byte = 1 token
    (`reverse`: the same alphabet numbered backwards, a tokenizer with other ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if reverse:
        alphabet = alphabet[::-1]
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", model_max_length=model_max_length)


def subprocess_env(tmp_path: Path) -> dict:
    """Environment of a `run_eval.py` subprocess: offline, its own cache, this checkout first."""
    return dict(os.environ, EVALHARNESS_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def run_eval_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_eval.py"), *args]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """The harness cache (token ids, converted weights) in this test's temporary folder."""
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer, info) of `random:tiny` (fp32, CPU; native context 256, byte tokenizer)."""
    from evalharness.models import load

    return load("random:tiny", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def sharp_llama():
    """(model, tokenizer) of random:tiny with sharpened attention (q, k × 6), so greedy tokens depend
    on the rotation; one per test module (tests rescale it in place)."""
    import torch

    from evalharness.models import load

    model, tok, _ = load("random:tiny", dtype="float32", device="cpu")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
    return model, tok


@pytest.fixture(scope="session")
def wheel_path(tmp_path_factory) -> Path:
    """A wheel built from a copy of this checkout's sources (setuptools builds in the source tree,
    so not in the checkout itself): what a non-editable install gets."""
    import shutil
    import subprocess

    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("evalharness", "tasks"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("evalharness-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheel_names(wheel_path) -> set[str]:
    """The file names inside the wheel of this checkout (`wheel_path`)."""
    import zipfile

    return set(zipfile.ZipFile(wheel_path).namelist())


def raise_bug(*args, **kwargs):
    """Stand-in for a harness function with a programming error (failure-policy tests)."""
    raise ValueError("bug")


def break_lm_eval_once(monkeypatch) -> None:
    """lm-eval's `evaluate` raises `ValueError("lm-eval broke")` on its first call and works after:
    a failure inside lm-eval (under the real `simple_evaluate`), for failure-policy tests."""
    import lm_eval.evaluator

    real, calls = lm_eval.evaluator.evaluate, []

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("lm-eval broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", broken_once)


@pytest.fixture()
def run_folder(tmp_path):
    """A run folder with perplexity, passkey and leaderboard tables written through the store."""
    from tables_data import leaderboard_frame, passkey_frame, perplexity_frame, write_manifest

    from evalharness.results import ResultStore

    folder = tmp_path / "run"
    store = ResultStore(folder)
    store.replace("perplexity", perplexity_frame())
    store.append("passkey", passkey_frame().to_dict("records"))
    store.append("leaderboard", leaderboard_frame().to_dict("records"))
    write_manifest(folder)
    return folder
