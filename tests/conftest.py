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


@pytest.fixture(scope="session")
def wheel_names(tmp_path_factory) -> set[str]:
    """The file names inside a wheel built from a copy of this checkout's sources (setuptools
    builds in the source tree, so not in the checkout itself): what a non-editable install gets."""
    import shutil
    import subprocess
    import zipfile

    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "evalharness", source / "evalharness",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("evalharness-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())
