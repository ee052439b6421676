"""`--method native` (the RoPE a model ships with), L from original_max_position_embeddings,
`--allow-pickle-weights` and `--sliding-window-attention`, on tiny local model folders built here."""
import json

import pandas as pd
import pytest
import torch
from conftest import write_corpus
from transformers import AutoConfig, AutoModelForCausalLM

from evalharness import cli, models, scaling
from evalharness.analysis.display import method_display
from evalharness.cli.common import build_specs
from evalharness.methods import ScalingSpec, native_display

pytestmark = pytest.mark.usefixtures("isolated_cache")
WORDS = "the cat sat on a mat and the dog ran far away from home"

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=models.BYTE_VOCAB_SIZE, bos_token_id=1,
            eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1)


def tiny_model(model_type="llama", seed=0, **overrides):
    config = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def save_folder(model, folder, safetensors=True):
    folder.mkdir(parents=True, exist_ok=True)
    if safetensors:
        model.save_pretrained(folder)
    else:  # a pre-safetensors checkpoint: config.json + pytorch_model.bin
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    models.build_byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 2, WORDS, lambda i: 60 + 10 * i)


def run(folder, corpus, out, *extra, method="native", lengths="32,64,96,128"):
    argv = ["--model", str(folder), "--method", method, "--factor", "2", "--dataset", f"local:{corpus}",
            "--lengths", lengths, "--out", str(out), "--no-progress", "--no-plots", "--dtype", "float32",
            "--device", "cpu", *extra]
    return cli.main(argv)


def doc_ids(folder, corpus, n):
    from evalharness import corpora

    tokenizer = models.build_byte_tokenizer()
    docs = corpora.load_corpus(f"local:{corpus}", tokenizer, min_tokens=n - 1, n_docs=None)
    return [(d.doc_id, torch.cat([torch.tensor([1]), d.ids])) for d in docs]


def nll_sum(model, ids, length):
    """Σ NLL of tokens 1…length−1 of one window, by transformers' own loss (the obvious way)."""
    with torch.no_grad():
        window = ids[:length].reshape(1, -1)
        return float(model(window, labels=window).loss.double()) * (length - 1)


# ---------------------------------------------------------------------------------------------
# native = what ships
# ---------------------------------------------------------------------------------------------

YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 64}


def test_native_yarn_equals_yarn_2_and_differs_from_base(corpus, tmp_path):
    folder = save_folder(tiny_model(max_position_embeddings=128, rope_parameters=dict(YARN_ROPE)), tmp_path / "m")
    out = tmp_path / "run"
    assert run(folder, corpus, out, method="native,yarn,base") == cli.EXIT_OK
    docs = pd.read_csv(out / "perplexity_docs.csv")
    # L defaults to original_max_position_embeddings (64), not max_position_embeddings (128)
    assert set(docs["original_ctx"]) == {64}
    native = docs[docs.method == "native:rope_type=yarn"].set_index(["doc_id", "context_length"])
    yarn = docs[docs.method == "yarn"].set_index(["doc_id", "context_length"])
    base = docs[docs.method == "base"].set_index(["doc_id", "context_length"])
    assert len(native) == 2 * 4 and set(native["factor"]) == {2.0}
    rel = (native["nll_sum"] - yarn["nll_sum"]).abs() / yarn["nll_sum"]
    assert rel.max() < 1e-5
    assert ((native["nll_sum"] - base["nll_sum"]).abs() / base["nll_sum"]).min() > 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    rope = manifest["runs"][-1]["rope"]
    assert rope["shipped"]["rope_type"] == "yarn" and rope["native"] == "native (yarn s=2)"
    assert rope["base"].startswith("plain RoPE") and "not the shipped yarn s=2" in rope["base"]


def test_native_yarn_matches_transformers_forward(tmp_path):
    """native is the model as loaded: same logits as a fresh load, whatever was applied before."""
    model = tiny_model(max_position_embeddings=128, rope_parameters=dict(YARN_ROPE))
    ids = torch.randint(3, 200, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids).logits
        scaling.apply_scaling(model, "pi:4")
        scaled = model(ids).logits
        resolved = scaling.apply_scaling(model, "native")
        again = model(ids).logits
    assert not torch.allclose(scaled, reference)
    assert torch.equal(again, reference)
    assert (resolved.label, resolved.factor, resolved.original_ctx, resolved.is_dynamic) == (
        "native:rope_type=yarn", 2.0, 64, False)


DYNAMIC_ROPE = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}


def test_native_dynamic_curve_is_per_length(corpus, tmp_path):
    folder = save_folder(tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE)), tmp_path / "d")
    out = tmp_path / "run"
    assert run(folder, corpus, out) == cli.EXIT_OK
    docs = pd.read_csv(out / "perplexity_docs.csv").set_index(["doc_id", "context_length"])
    assert set(docs["method"]) == {"native:rope_type=dynamic"} and set(docs["original_ctx"]) == {64}
    for doc_id, ids in doc_ids(folder, corpus, 128):
        one_pass_model = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            window = ids[:128].reshape(1, -1)
            logits = one_pass_model(window).logits[0, :-1].double()
        one_pass = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none")
        for length in (32, 64, 96, 128):
            fresh = AutoModelForCausalLM.from_pretrained(folder).eval()  # no state from other lengths
            expected = nll_sum(fresh, ids, length)
            got = docs.loc[(doc_id, length), "nll_sum"]
            assert abs(got - expected) / expected < 1e-5, (doc_id, length)
            # a one-pass curve scores every prefix with the frequencies of 128 (s = 2), the
            # per-length curve with those of its own length: they agree only at 128
            curve = float(one_pass[: length - 1].sum())
            if length < 128:
                assert abs(curve - expected) / expected > 1e-4, (doc_id, length)
            else:
                assert abs(curve - expected) / expected < 1e-5


def test_transformers_dynamic_cache_trap_and_stateless_native():
    """transformers' dynamic RoPE keeps the largest length's frequencies for a shorter sequence
    above L; native clears that state, so 96 after 128 equals 96 on a fresh model."""
    ids = torch.randint(3, 200, (1, 128), generator=torch.Generator().manual_seed(2))
    fresh = tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE))
    with torch.no_grad():
        expected = fresh(ids[:, :96]).logits
        raw = tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE))
        raw(ids)
        stale = raw(ids[:, :96]).logits
        native = tiny_model(max_position_embeddings=64, rope_parameters=dict(DYNAMIC_ROPE))
        resolved = scaling.apply_scaling(native, "native")
        native(ids)
        got = native(ids[:, :96]).logits
    assert resolved.is_dynamic and resolved.original_ctx == 64
    assert not torch.allclose(stale, expected, atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_native_on_plain_model_equals_base():
    model = tiny_model(max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    ids = torch.randint(3, 200, (1, 80), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        resolved = scaling.apply_scaling(model, "native")
        native = model(ids).logits
        scaling.apply_scaling(model, "base")
        base = model(ids).logits
    assert resolved.display == "native (default)"
    assert torch.allclose(native, base, atol=1e-5, rtol=0)


def test_native_labels():
    assert native_display("yarn", 16.0) == "native (yarn s=16)"
    assert native_display("dynamic", 2.0) == "native (dynamic s=2)"
    assert native_display("default", 1.0) == "native (default)"
    assert method_display("native:rope_type=yarn", 16) == "native (yarn s=16)"
    assert method_display("native:rope_type=linear", 8.0) == "native (linear s=8)"
    # native ignores the --factor grid until it is resolved against a model
    specs = build_specs("native,yarn", "2,4", 64)
    assert [str(s) for s in specs] == ["native", "yarn:2:original_ctx=64", "yarn:4:original_ctx=64"]
    assert not ScalingSpec("native").is_dynamic and ScalingSpec("native", native_type="longrope").is_dynamic


def test_shipped_rope_reads_types():
    def config(rope, max_pos=128):
        return AutoConfig.for_model("llama", **{**TINY, "max_position_embeddings": max_pos, "rope_parameters": rope})

    linear = scaling.shipped_rope(config({"rope_type": "linear", "rope_theta": 1e4, "factor": 8.0}))
    assert (linear.rope_type, linear.factor, linear.original_ctx) == ("linear", 8.0, 128)
    yarn = scaling.shipped_rope(config(dict(YARN_ROPE)))
    assert (yarn.rope_type, yarn.factor, yarn.original_ctx) == ("yarn", 2.0, 64)
    dynamic = scaling.shipped_rope(config(dict(DYNAMIC_ROPE), max_pos=64))
    assert (dynamic.rope_type, dynamic.original_ctx) == ("dynamic", 64)


# ---------------------------------------------------------------------------------------------
# --allow-pickle-weights
# ---------------------------------------------------------------------------------------------

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


def test_bin_only_checkpoint_refused_by_transformers_names_the_flag(tmp_path):
    """The same sentence when transformers itself finds no safetensors (the hub path, where no
    folder can be checked beforehand)."""
    folder = save_folder(tiny_model(max_position_embeddings=64), tmp_path / "bin", safetensors=False)
    with pytest.raises(models.ModelLoadError, match="--allow-pickle-weights"):
        models._load_pretrained(str(folder), {"dtype": torch.float32}, {})
    model, _ = models._load_pretrained(str(folder), {"dtype": torch.float32, "use_safetensors": None}, {})
    assert model.config.model_type == "llama"


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


# ---------------------------------------------------------------------------------------------
# --sliding-window-attention
# ---------------------------------------------------------------------------------------------

WINDOW = 16


def mistral_pair(attn_impl):
    """The same weights with a 16-token sliding window and without one."""
    windowed = tiny_model("mistral", max_position_embeddings=256, sliding_window=WINDOW,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e4}, attn_implementation=attn_impl)
    full = tiny_model("mistral", max_position_embeddings=256, sliding_window=None,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e4}, attn_implementation=attn_impl)
    full.load_state_dict(windowed.state_dict())
    return windowed, full


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_sliding_window_off_equals_full_attention(attn_impl):
    windowed, full = mistral_pair(attn_impl)
    reference, default = assert_window_off_is_full_attention(windowed, full, seed=4)
    # inside the first window the mask is the same
    assert torch.allclose(default[:WINDOW], reference[:WINDOW], atol=1e-5)


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


def test_sliding_window_size_option_sets_window():
    windowed, full = mistral_pair("sdpa")
    ids = torch.randint(3, 200, (1, 48), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        models.set_sliding_window(full, WINDOW)
        assert torch.allclose(full(ids).logits, windowed(ids).logits, atol=1e-5, rtol=0)


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
    default = pd.read_csv(tmp_path / "default" / "perplexity_docs.csv").set_index(["doc_id", "context_length"])
    off = pd.read_csv(tmp_path / "off" / "perplexity_docs.csv").set_index(["doc_id", "context_length"])
    assert (default.xs(16, level=1)["nll_sum"] - off.xs(16, level=1)["nll_sum"]).abs().max() < 1e-3
    assert ((default.xs(32, level=1)["nll_sum"] - off.xs(32, level=1)["nll_sum"]).abs() > 1e-3).all()


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

