"""Every bad input costs a second: one sentence on stderr, exit code 2, no table written."""
import json

import numpy as np
import pytest
import torch
import transformers
from conftest import write_corpus

from evalharness import cli
from evalharness.results import SCHEMAS

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    write_corpus(root / "corpus", 2, "the lemma holds for every natural number by induction", 120)
    (root / "body.jsonl").write_text("\n".join(json.dumps({"body": "x" * 50}) for _ in range(3)))
    gpt2 = root / "gpt2"
    config = transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2, n_positions=512)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(gpt2)
    from evalharness.models import build_byte_tokenizer

    build_byte_tokenizer().save_pretrained(gpt2)
    import gguf

    writer = gguf.GGUFWriter(str(root / "other.gguf"), arch="rwkv6")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (root / "a_file").write_text("not a folder")
    # corrupt model files: a GGUF cut off inside its header (the issue's struct.error), a file that is
    # no GGUF at all, and a saved llama checkpoint with each of config, tokenizer and weights cut in half
    (root / "cut.gguf").write_bytes((root / "other.gguf").read_bytes()[:100])
    (root / "notgguf.gguf").write_bytes(b"PK\x03\x04 a zip file renamed")
    # ... and one cut off in the middle of its tensor data (header and tensor table intact)
    tensor = gguf.GGUFReader(str(root / "other.gguf")).tensors[0]
    middle = int(tensor.data_offset) + int(tensor.n_bytes) // 2
    (root / "cut-data.gguf").write_bytes((root / "other.gguf").read_bytes()[:middle])
    from evalharness.models import random_model

    model, tokenizer = random_model("tiny", torch.float32, "cpu")
    for damaged in ("config.json", "tokenizer.json", "model.safetensors"):
        folder = root / f"cut-{damaged}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        data = (folder / damaged).read_bytes()
        (folder / damaged).write_bytes(data[: len(data) // 2])
    # configs that are valid JSON but not a valid transformers config (one key changed each)
    bad_configs = {"model_type": {"model_type": "nonsense"}, "field-type": {"hidden_size": "abc"},
                   "yarn-no-factor": {"rope_parameters": {"rope_type": "yarn"}},
                   "legacy-yarn-no-factor": {"rope_parameters": None, "rope_scaling": {"rope_type": "yarn"}},
                   "factor-text": {"rope_parameters": {"rope_type": "linear", "factor": "abc", "rope_theta": 1e4}},
                   "rope-type": {"rope_parameters": {"rope_type": "bogus", "rope_theta": 1e4}},
                   "rope-theta-zero": {"rope_parameters": {"rope_type": "default", "rope_theta": 0}},
                   "yarn-original-zero": {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4,
                                                              "original_max_position_embeddings": 0}},
                   "linear-factor-negative": {"rope_parameters": {"rope_type": "linear", "factor": -2.0,
                                                                  "rope_theta": 1e4}}}
    # weights whose shapes do not fit the config (vocab_size changed after saving)
    folder = root / "weights-not-config"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, vocab_size=10)))
    for name, change in bad_configs.items():
        folder = root / f"config-{name}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    # config and weights but no tokenizer file
    model.save_pretrained(root / "no-tokenizer")
    # Parquet files that are not: random bytes, and the magic bytes around garbage
    (root / "random.parquet").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    (root / "fake.parquet").write_bytes(b"PAR1 garbage between the magic bytes PAR1")
    # text that is not UTF-8: a latin-1 document in a .txt folder, a latin-1 line in a .jsonl
    latin = root / "latin1"
    latin.mkdir()
    (latin / "a.txt").write_text(" ".join(["induction"] * 200))
    (latin / "b.txt").write_bytes(("théorème " * 200).encode("latin-1"))
    (root / "latin1.jsonl").write_bytes(json.dumps({"text": "ok " * 100}).encode() + b"\n"
                                        + b'{"text": "th\xe9or\xe8me"}\n')
    return root


CASES = [
    ("unknown method", {"method": "yarm"}, "unknown method 'yarm'"),
    ("factor not a number", {"factor": "two"}, "factor 'two' is not a number"),
    ("factor zero", {"factor": "0"}, "factor '0' must be > 0"),
    ("factor negative", {"factor": "-2"}, "factor '-2' must be > 0"),
    ("factor below 1", {"method": "yarn", "factor": "0.5"}, "factor 0.5 is < 1"),
    ("original context zero", {"original_ctx": "0"}, "--original-ctx 0 must be ≥ 1"),
    ("dynamic below L only", {"method": "dynamic-yarn", "lengths": "64,128"}, "dynamic-yarn equals base at every "
                                                                              "length"),
    ("lengths decreasing", {"lengths": "256,128"}, "must be strictly increasing"),
    ("length zero", {"lengths": "0,128"}, "must all be ≥ 2 tokens"),
    ("lengths not a count", {"lengths": "lots"}, "'lots' is not a token count"),
    ("longer than any document", {"lengths": "128:4k:128"}, "documents"),
    ("model without RoPE", {"model": "{root}/gpt2"}, "GPT2LMHeadModel has no rotary position embedding"),
    ("model path missing", {"model": "{root}/nowhere"}, "nowhere"),
    ("hub id offline", {"model": "nobody/not-a-model"}, "nobody/not-a-model"),
    ("GGUF of another architecture", {"model": "{root}/other.gguf"}, "architecture 'rwkv6'"),
    ("unknown random shape", {"model": "random:gigantic"}, "gigantic"),
    ("bad dtype", {"dtype": "float8"}, "float8"),
    ("unknown dataset", {"dataset": "wikitext"}, "unknown corpus 'wikitext'"),
    ("hub dataset without owner", {"dataset": "hf:proofpile"}, "'hf:proofpile' is not hf:OWNER/NAME"),
    ("hub dataset offline", {"dataset": "hf:nobody/not-a-dataset:train"}, "'nobody/not-a-dataset' (split 'train'), "
                                                                          "which is not in the local HF cache"),
    ("local file without the field", {"dataset": "local:{root}/body.jsonl"}, "'text'"),
    ("no document after min-tokens", {"min_tokens": "100k"}, "min_tokens"),
    ("unknown task", {"tasks": "perplexity,needle"}, "unknown task 'needle'"),
    ("out is a file", {"out": "{root}/a_file"}, "is a file"),
    ("docs and sample", {"docs": "1", "sample": "1"}, "exclude each other"),
    ("stride without sliding", {"stride": "64"}, "--stride only applies with --protocol sliding"),
    ("passkey trials zero", {"tasks": "passkey", "lengths": "300,400", "trials": "0"}, "--trials 0 must be ≥ 1"),
    ("stride above window", {"protocol": "sliding", "lengths": "64,128", "stride": "100"}, "larger than the "
                                                                                           "smallest window"),
    ("unknown lm-eval task", {"tasks": "leaderboard", "leaderboard_tasks": "arc_chalenge"}, "unknown lm-eval task "
                                                                                            "'arc_chalenge'"),
    ("task YAML missing", {"tasks": "leaderboard", "leaderboard_tasks": "{root}/mine.yaml"},
     "mine.yaml does not exist"),
    ("stride = window with BOS in every window", {"protocol": "sliding", "lengths": "64,128", "stride": "64"},
     "larger than the 63 document tokens"),
    ("window-bos without sliding", {"window_bos": "every"}, "--window-bos only applies with --protocol sliding"),
    ("position bucket zero", {"position_bucket": "0"}, "--position-bucket 0 must be ≥ 1"),
    ("effective-context fraction zero", {"ruler_fraction": "0"}, "--ruler-fraction 0 is out of range"),
    ("passkey prompt too short", {"tasks": "passkey", "lengths": "200,400"}, "shorter than the prompt without filler"),
    ("temperature grid", {"tasks": "temperature-sweep", "temperatures": "1:x:0.1"}, "start:stop:step"),
    ("GGUF cut off in its header", {"model": "{root}/cut.gguf"}, "cut.gguf' (100 bytes) is truncated"),
    ("not a GGUF file", {"model": "{root}/notgguf.gguf"}, "is not a GGUF file"),
    ("config cut off", {"model": "{root}/cut-config.json"}, "cut-config.json/config.json is not valid JSON"),
    ("tokenizer cut off", {"model": "{root}/cut-tokenizer.json"}, "json/tokenizer.json is not valid"),
    ("weights cut off", {"model": "{root}/cut-model.safetensors"}, "model.safetensors is damaged"),
    ("GGUF cut off in its tensor data", {"model": "{root}/cut-data.gguf"},
     "cut-data.gguf' (512 bytes) is truncated or corrupt (gguf's reader fails"),
    ("config model_type unknown", {"model": "{root}/config-model_type"},
     "config-model_type/config.json is not a valid transformers config (The checkpoint you are trying to load "
     "has model type `nonsense`"),
    ("config field of the wrong type", {"model": "{root}/config-field-type"},
     "Field 'hidden_size' expected int, got str (value: 'abc')"),
    ("config YaRN without factor", {"model": "{root}/config-yarn-no-factor"},
     "config-yarn-no-factor/config.json is not a valid transformers config (Missing required keys in "
     "`rope_parameters` for 'rope_type'='yarn': {'factor'})"),
    ("config legacy rope_scaling without factor", {"model": "{root}/config-legacy-yarn-no-factor"},
     "Missing required keys in `rope_parameters` for 'rope_type'='yarn': {'factor'}"),
    ("config RoPE factor not a number", {"model": "{root}/config-factor-text"},
     "rope_parameters['factor'] = 'abc' is not a number"),
    ("config RoPE type unknown", {"model": "{root}/config-rope-type"},
     "rope_parameters['rope_type'] = 'bogus' is not a RoPE type transformers knows"),
    ("Parquet of random bytes", {"dataset": "local:{root}/random.parquet"},
     "random.parquet is not a readable Parquet file (Parquet magic bytes not found"),
    ("Parquet with magic bytes only", {"dataset": "local:{root}/fake.parquet"},
     "fake.parquet is not a readable Parquet file"),
    ("text not UTF-8", {"dataset": "local:{root}/latin1"}, "latin1/b.txt is not UTF-8 text (byte 2"),
    ("JSON line not UTF-8", {"dataset": "local:{root}/latin1.jsonl"}, "latin1.jsonl line 2 is not UTF-8"),
    # numbers: sign, range, finiteness, whole numbers; argparse's own errors in the same one sentence
    ("chunk size negative", {"chunk_size": "-5"}, "--chunk-size -5 must be ≥ 1"),
    ("chunk size zero", {"chunk_size": "0"}, "--chunk-size 0 must be ≥ 1"),
    ("chunk size not a number", {"chunk_size": "big"}, "--chunk-size 'big' is not a whole number"),
    ("stride negative", {"protocol": "sliding", "stride": "-64"}, "--stride -64 must be ≥ 1"),
    ("original context negative", {"original_ctx": "-1"}, "--original-ctx -1 must be ≥ 1"),
    ("min-tokens negative", {"min_tokens": "-1"}, "--min-tokens -1 must be ≥ 0"),
    ("limit negative", {"tasks": "leaderboard", "limit": "-1"}, "--limit '-1'"),
    ("docs not a number", {"docs": "some"}, "--docs 'some' is not a whole number"),
    ("seed negative", {"seed": "-1"}, "--seed -1 must be ≥ 0"),
    ("batch size zero", {"tasks": "leaderboard", "batch_size": "0"}, "--batch-size 0 must be ≥ 1"),
    ("protocol not a choice", {"protocol": "window"}, "--protocol 'window' is not valid; choose from 'truncated'"),
    ("unknown option", {"strides": "64"}, "unrecognized arguments: --strides 64"),
    ("option without its value", {"lengths": None}, "--lengths needs a value"),
    ("factor infinite", {"factor": "inf"}, "factor 'inf' must be a finite number > 0"),
    ("factor NaN", {"factor": "nan"}, "factor 'nan' must be > 0"),
    ("method option NaN", {"method": "yarn:2:beta_fast=nan"}, "beta_fast 'nan' in spec 'yarn:2:beta_fast=nan' is not "
                                                              "a finite number"),
    ("method option infinite", {"method": "yarn:2:attention_factor=inf"}, "attention_factor 'inf'"),
    ("temperature step zero", {"tasks": "temperature-sweep", "temperatures": "1:1.4:0"}, "step > 0"),
    ("temperature NaN", {"tasks": "temperature-sweep", "temperatures": "1,nan"}, "finite numbers"),
    # a comma too many is a slip, never an item to drop silently; an option given twice in a spec too
    ("lengths trailing comma", {"lengths": "64,128,"}, "--lengths: length list '64,128,' has an empty item"),
    ("methods double comma", {"method": "base,,yarn"}, "--method 'base,,yarn' has an empty item"),
    ("tasks trailing comma", {"tasks": "perplexity,"}, "--tasks 'perplexity,' has an empty item"),
    ("reference leading comma", {"reference": ",yarn:2"}, "--reference ',yarn:2' has an empty item"),
    ("factors double comma", {"factor": "2,,4"}, "--factor: factor list '2,,4' has an empty item"),
    ("temperatures double comma", {"tasks": "temperature-sweep", "temperatures": "1.0,,1.2"},
     "--temperatures: grid '1.0,,1.2' has an empty item"),
    ("method option twice", {"method": "yarn:2:beta_fast=32:beta_fast=16"},
     "beta_fast is given twice in spec 'yarn:2:beta_fast=32:beta_fast=16'"),
    ("factor twice in a spec", {"method": "yarn:2:s=4"}, "factor is given twice in spec 'yarn:2:s=4'"),
    ("RULER tasks trailing comma", {"tasks": "ruler", "lengths": "2k", "ruler_tasks": "niah_single_1,"},
     "--ruler-tasks 'niah_single_1,' has an empty item"),
    ("leaderboard tasks trailing comma", {"tasks": "leaderboard", "leaderboard_tasks": "arc_challenge,"},
     "--leaderboard-tasks 'arc_challenge,' has an empty item"),
    ("tolerance NaN", {"ppl_tolerance": "nan"}, "--ppl-tolerance 'nan' is not a finite number"),
    # paths: the output folder can be created and written; data folders exist
    ("out under a file", {"out": "{root}/a_file/run"}, "is a file; give a folder path whose parents are folders"),
    ("out in /proc", {"out": "/proc/evalharness-run"}, "is inside a kernel file system"),
    ("leaderboard data missing", {"tasks": "leaderboard", "leaderboard_data": "/nonexistent"},
     "--leaderboard-data '/nonexistent' is not a folder"),
    # lists and names
    ("no task", {"tasks": ""}, "--tasks '' names no task"),
    ("empty text field", {"text_field": ""}, "--text-field '' is empty"),
    ("unknown reference", {"reference": "bogus:2"}, "--reference: unknown method 'bogus'"),
    ("attention implementation not installed", {"attn_impl": "flash_attention_2"},
     "'flash_attention_2' needs the flash-attn package"),
    ("model folder without tokenizer", {"model": "{root}/no-tokenizer"}, "no-tokenizer' has no tokenizer"),
    ("RULER length below the template", {"tasks": "ruler", "lengths": "256"},
     "RULER length 256 is too short for niah_single_1"),
    ("config rope_theta zero", {"model": "{root}/config-rope-theta-zero"},
     "rope_parameters['rope_theta'] = 0 is not a finite number > 0"),
    # a task's own option while that task is not run
    ("passkey option without passkey", {"depths": "2"}, "--depths only applies with --tasks passkey"),
    ("corpus option without a corpus task", {"tasks": "passkey", "lengths": "300,400", "dataset": "debian-policy"},
     "--dataset only applies with --tasks perplexity or temperature-sweep"),
    ("leaderboard option without leaderboard", {"limit": "5"}, "--limit only applies with --tasks leaderboard"),
    ("RULER option without RULER", {"tasks": "passkey", "lengths": "300,400", "ruler_samples": "2"},
     "--ruler-samples only applies with --tasks ruler"),
    ("temperatures without the sweep", {"temperatures": "1.0"}, "--temperatures only applies with --tasks "
                                                                "temperature-sweep"),
    # magnitudes: numbers no evaluation means, which would reach torch as overflows or hangs
    ("length beyond the largest count", {"lengths": "2:2000000000000:1"},
     "--lengths: '2000000000000' is more than 16,777,216"),
    ("too many lengths", {"lengths": "2:1000000:2"}, "name 500,000 lengths; at most 1000"),
    ("original context beyond the largest count", {"original_ctx": "100000000000000000000"},
     "--original-ctx 100000000000000000000 must be ≤ 16,777,216"),
    ("factor beyond the largest", {"factor": "1e300"}, "factor '1e300' must be a finite number > 0 and ≤ 4096"),
    ("factor in the spec beyond the largest", {"method": "yarn:1e300"}, "factor 1e+300 is not valid"),
    ("attention factor huge", {"method": "yarn:2:attention_factor=1e300"}, "attention_factor 1e+300 is not valid"),
    ("seed beyond 32 bits", {"seed": "4294967296"}, "--seed 4294967296 must be ≤ 4,294,967,295"),
    ("temperature grid too fine", {"tasks": "temperature-sweep", "temperatures": "1:1e12:1e-12"}, "at most 1000"),
    ("temperature huge", {"tasks": "temperature-sweep", "temperatures": "1e300"}, "attention factors must be > 0 "
                                                                                 "and ≤ 10"),
    ("passkey depths beyond the largest", {"tasks": "passkey", "lengths": "300,400", "depths": "100000000000000000000"},
     "--depths 100000000000000000000 must be ≤ 1,000"),
    ("non-ASCII digits", {"lengths": "６４"}, "'６４' is not a token count"),
    # the whole --reference spec, as --method takes it
    ("reference factor negative", {"reference": "yarn:-2"}, "--reference: factor -2.0 is not valid"),
    ("reference unknown option", {"reference": "yarn:2:bogus=1"}, "--reference: cannot read 'bogus=1'"),
    ("out empty", {"out": ""}, "--out '' is empty"),
    ("limit names a task twice", {"tasks": "leaderboard", "limit": "arc_challenge=1,arc_challenge=2"},
     "names arc_challenge twice"),
    ("leaderboard data folder without data", {"tasks": "leaderboard", "leaderboard_data": "{root}/latin1"},
     "holds none of the data folders (arc_challenge, hellaswag, mmlu, passkey, truthfulqa)"),
    ("sliding window longer than every document", {"protocol": "sliding", "lengths": "16k", "stride": "64",
                                                   "min_tokens": "0"}, "longer than every selected document"),
    ("config YaRN original context zero", {"model": "{root}/config-yarn-original-zero"},
     "config-yarn-original-zero/config.json is not a valid transformers config"),
    ("config RoPE factor negative", {"model": "{root}/config-linear-factor-negative"},
     "rope_parameters['factor'] = -2.0 is not a finite number > 0"),
    ("weights that do not fit the config", {"model": "{root}/weights-not-config"},
     "its weights do not have the shapes config.json gives"),
]

CORPUS_TASKS = ("perplexity", "temperature-sweep")


def arguments(files, change, out):
    options = {"model": "random:tiny", "method": "base,yarn", "factor": "2", "dataset": f"local:{files}/corpus",
               "lengths": "64:256:64", "out": str(out)}
    options.update({k: (v.format(root=files) if isinstance(v, str) else v) for k, v in change.items()})
    if "dataset" not in change and not set(options.get("tasks", "perplexity").split(",")) & set(CORPUS_TASKS):
        del options["dataset"]  # a corpus is an option of the corpus tasks only
    argv = []
    for key, value in options.items():
        argv.append("--" + key.replace("_", "-"))
        if value is not None:
            argv.append(value)
    return argv + ["--no-progress", "--no-plots"]


@pytest.mark.parametrize("name, change, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(files, tmp_path, capsys, name, change, message):
    out = tmp_path / "out"
    code = cli.main(arguments(files, change, out))
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE, err
    assert err.startswith("error: ") and message in err, err
    assert len(err.splitlines()) == 1, err  # one sentence, no traceback
    written = [p for p in tmp_path.rglob("*.csv") if p.stem in SCHEMAS]  # no result table anywhere
    assert not written, written
    assert not out.exists() and not list(tmp_path.rglob("manifest.json"))  # nothing written in --out


def test_cut_gguf_refused_before_any_conversion(files, tmp_path, capsys, monkeypatch):
    """A GGUF cut inside its tensor data is refused by the cheap reader check, also with --dry-run:
    transformers' GGUF loader (minutes on a real model) is never called."""
    from evalharness import models

    calls = []

    class NoConversion:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            calls.append(kwargs.get("gguf_file"))
            raise AssertionError("the GGUF was converted")

    monkeypatch.setattr(models, "AutoModelForCausalLM", NoConversion)
    code = cli.main(arguments(files, {"model": "{root}/cut-data.gguf"}, tmp_path / "out") + ["--dry-run"])
    err = capsys.readouterr().err.strip()
    assert (code, calls) == (cli.EXIT_USAGE, []), err
    assert "cut-data.gguf" in err and "truncated or corrupt" in err and len(err.splitlines()) == 1, err
