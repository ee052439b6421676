"""Tiny local model folders (config + safetensors + a byte-level tokenizer) and a CLI run on them,
shared by the model-loading and scaling tests."""
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from evalharness import cli, models

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


def run(folder, corpus, out, *extra, method="native", lengths="32,64,96,128"):
    argv = ["--model", str(folder), "--method", method, "--factor", "2", "--dataset", f"local:{corpus}",
            "--lengths", lengths, "--out", str(out), "--no-progress", "--no-plots", "--dtype", "float32",
            "--device", "cpu", *extra]
    return cli.main(argv)
