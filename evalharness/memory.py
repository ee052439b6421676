"""Peak-memory estimate of one evaluation cell from the model's config alone (no torch, no weights):
`estimate_peak_bytes(config, dtype, length, ...)` returns the bytes alive at the cell's peak as the
engine runs it, one-shot or chunked (`prefill_chunk`), for a Llama-family decoder; allocator
overhead is not modelled (`tests/test_memory.py` states the tolerance).

Formulas: docs/performance.md#memory-estimate
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Mapping

# Mirrors the engine's DEFAULT_HEAD_BYTES / head_chunk_size (kept here so this module needs no torch;
# a test asserts the two rules agree).
DEFAULT_HEAD_BYTES = 256 * 2**20
MIN_HEAD_CHUNK = 64

_DTYPE_BYTES = {
    "float32": 4, "fp32": 4, "float": 4,
    "bfloat16": 2, "bf16": 2,
    "float16": 2, "fp16": 2, "half": 2,
}
_MEMORY_EFFICIENT_ATTENTION = ("sdpa", "flex_attention")
FP32 = 4  # RMSNorm statistics, softmax of eager attention and the LM-head logits are float32
INT64 = 8


@dataclass(frozen=True)
class ModelShape:
    """The config numbers the estimate needs (Llama-family names)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_width(self) -> int:
        """Query projection width nh·hd."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Key (= value) projection width n_kv·hd."""
        return self.kv_heads * self.head_dim


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def model_shape(config: Any) -> ModelShape:
    """Read a ModelShape from a transformers config (its text config for multimodal models) or a
    plain dict with the same keys (e.g. `models.RANDOM_SHAPES[name]`)."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = _get(config, "hidden_size")
    heads = _get(config, "num_attention_heads")
    layers = _get(config, "num_hidden_layers")
    vocab = _get(config, "vocab_size")
    missing = [n for n, v in [("hidden_size", hidden), ("num_attention_heads", heads),
                              ("num_hidden_layers", layers), ("vocab_size", vocab)] if not v]
    if missing:
        raise ValueError(f"model config lacks {', '.join(missing)}: cannot estimate its memory.")
    head_dim = _get(config, "head_dim") or hidden // heads
    model_type = _get(config, "model_type", "")
    attention_bias = bool(_get(config, "attention_bias", False))
    return ModelShape(
        hidden=int(hidden),
        intermediate=int(_get(config, "intermediate_size") or 4 * hidden),
        layers=int(layers),
        heads=int(heads),
        kv_heads=int(_get(config, "num_key_value_heads") or heads),
        head_dim=int(head_dim),
        vocab=int(vocab),
        tied_embeddings=bool(_get(config, "tie_word_embeddings", True)),
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias,
        mlp_bias=bool(_get(config, "mlp_bias", False)),
    )


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a dtype given as a torch.dtype or a name (float32/fp32, bfloat16/bf16,
    float16/fp16)."""
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r} for the memory estimate; valid: float32, bfloat16, float16.")
    return _DTYPE_BYTES[name]


def default_chunk_size(vocab: int, budget_bytes: int = DEFAULT_HEAD_BYTES) -> int:
    """The engine's LM-head chunk: max(64, budget / (4·vocab)) positions (fp32 logits ≤ budget)."""
    return max(MIN_HEAD_CHUNK, budget_bytes // (FP32 * vocab))


def parameter_count(shape: ModelShape) -> int:
    """Parameters of a Llama-family causal LM:

        V·H·(1 if tied else 2) + H (final norm)
        + n_layers · (H·Q + 2·H·K + Q·H + 3·H·I + 2·H  + biases)

    with Q = nh·hd, K = n_kv·hd, I = intermediate size; biases: Q + 2K for q/k/v (attention_bias
    or Qwen2), H for o_proj (attention_bias), 2I + H for the MLP (mlp_bias).
    """
    h, q, k, i = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate
    per_layer = h * q + 2 * h * k + q * h + 3 * h * i + 2 * h
    per_layer += (q + 2 * k) * shape.qkv_bias + h * shape.o_bias + (2 * i + h) * shape.mlp_bias
    embeddings = shape.vocab * h * (1 if shape.tied_embeddings else 2)
    return embeddings + h + shape.layers * per_layer


def _attention_kind(attn_impl: str | None) -> str:
    """"eager" (materialises T×T scores per head) or "memory-efficient" (SDPA, flash, flex)."""
    name = (attn_impl or "sdpa").lower()
    if name == "eager":
        return "eager"
    if name in _MEMORY_EFFICIENT_ATTENTION or "flash" in name:
        return "memory-efficient"
    raise ValueError(f"unknown attention implementation {attn_impl!r}; valid: eager, sdpa, "
                     "flash_attention_2, flash_attention_3, flex_attention.")


def decoder_peak_bytes(shape: ModelShape, b: int, length: int, attn_impl: str | None = "sdpa",
                       key_length: int | None = None) -> int:
    """Live activation bytes at the worst moment of the decoder forward over `length` tokens.

    T = length, H = hidden, Q = nh·hd, K = n_kv·hd, I = intermediate, b = element bytes.
    Alive all along: token and position ids 2·8·T, the RoPE tables cos, sin 2·T·hd·b, the input
    embeddings E and the current layer's input X (T·H·b each; one tensor when n_layers = 1).
    On top, the largest of the phases of one layer:

    - RMSNorm (float32 statistics), the post-attention one being the worst: the attention
      residual T·H·b + 8·T·H (two fp32 [T, H] temporaries, or one fp32 and two b ones).
    - attention, memory-efficient (SDPA causal path with native GQA, flash): the norm output T·H·b
      plus the largest of
        q RoPE   4·T·Q·b + 2·T·K·b   (q, q·cos, rotate_half(q), its ·sin; k, v),
        k RoPE   2·T·Q·b + 5·T·K·b,
        kernel   3·T·Q·b + 2·T·K·b   (q, k, v, output, its contiguous transpose),
        o_proj   2·T·Q·b + 2·T·K·b + T·H·b.
    - attention, eager: norm output T·H·b + q, k, v and (GQA) repeated k, v
      (T·Q·b each) + the scores of all heads at the softmax, nh·T²·(8 + b) for 16-bit dtypes
      (pre-softmax scores b, their fp32 copy 4, fp32 softmax 4) and nh·T²·8 in float32.
    - gated MLP: residual and norm output 2·T·H·b + 3·T·I·b (act(gate), up, their product).

    Eager attention adds to the resident tensors the causal mask T²·b (built once per forward), and
    to the phases after attention (post-attention norm, MLP) the layer's attention weights nh·T²·b,
    which the decoder layer keeps bound (`hidden_states, _ = self.self_attn(...)`) until it returns.
    With `key_length` T_k (a chunk of T queries against T_k cached keys, the chunked prefill): the
    kernel's k and v and the eager scores and mask span T_k keys instead of T (the mask
    T·T_k·b and the kept weights nh·T·T_k·b likewise).
    """
    T, H, Q, K, I = length, shape.hidden, shape.q_width, shape.kv_width, shape.intermediate  # noqa: E741 (the formulas' symbols)
    Tk = key_length or T
    resident = 2 * INT64 * T + 2 * T * shape.head_dim * b + (2 if shape.layers > 1 else 1) * T * H * b
    norm = T * H * b + 8 * T * H
    mlp = 2 * T * H * b + 3 * T * I * b
    if _attention_kind(attn_impl) == "eager":
        resident += T * Tk * b  # the causal mask
        repeated = 2 * Tk * Q * b if shape.kv_heads < shape.heads else 0
        scores = shape.heads * T * Tk * (8 + (b if b < FP32 else 0))
        attention = T * H * b + (T * Q + 2 * Tk * K) * b + repeated + scores
        kept_weights = shape.heads * T * Tk * b
        norm, mlp = norm + kept_weights, mlp + kept_weights
    else:
        attention = T * H * b + b * max(T * 4 * Q + 2 * T * K, 2 * T * Q + 5 * T * K, 3 * T * Q + 2 * Tk * K,
                                        2 * T * Q + 2 * Tk * K + T * H)
    return resident + max(norm, attention, mlp)


def head_phase_bytes(shape: ModelShape, b: int, length: int, chunk_size: int | None = None) -> int:
    """Live bytes while the LM head runs over chunks of c = min(chunk, T − 1) positions:
    final hidden states T·H·b + the NLL vector 4·T + token ids 8·T + the chunk logits, 8·c·V
    (inside the cross-entropy: fp32 logits and their log-softmax, 4 + 4), or (8 + b)·c·V for a
    16-bit dtype with two chunks or more (the previous chunk's fp32 logits are still bound while
    the next chunk's head output, b, and its fp32 copy, 4, are made)."""
    T = length
    scored = max(T - 1, 1)
    chunk = min(chunk_size or default_chunk_size(shape.vocab), scored)
    previous_chunk_alive = b < FP32 and chunk < scored
    logits = (2 * FP32 + (b if previous_chunk_alive else 0)) * chunk * shape.vocab
    return T * shape.hidden * b + FP32 * T + INT64 * T + logits


def layer_windows(config: Any) -> list[int | None]:
    """Per decoder layer: its sliding attention window, or None for full attention (from the
    config's `layer_types` and `sliding_window`; every layer when there are no layer types)."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    window = _get(config, "sliding_window")
    layers = int(_get(config, "num_hidden_layers"))
    types = _get(config, "layer_types")
    if not window:
        return [None] * layers
    if not types:
        return [int(window)] * layers
    return [int(window) if "sliding" in str(t) else None for t in types]


def kv_cache_bytes(shape: ModelShape, b: int, length: int, windows: list[int | None] | None = None) -> int:
    """Keys and values of every layer for `length` tokens: 2·T_l·n_kv·hd·b summed over layers, T_l
    = T on full layers and min(T, window − 1) on sliding ones (transformers' sliding cache keeps
    window − 1 tokens); `windows` None: every layer full, 2·n_layers·T·n_kv·hd·b."""
    windows = windows or [None] * shape.layers
    kept = sum(length if w is None else min(length, w - 1) for w in windows)
    return 2 * kept * shape.kv_width * b


def estimate_peak_bytes(config: Any, dtype: Any, length: int, *, kv_cache: bool = False,
                        chunk_size: int | None = None, attn_impl: str = "sdpa",
                        n_params: int | None = None, prefill_chunk: int | None = None) -> dict[str, int]:
    """Peak memory of one cell at `length` tokens, broken down (bytes; see the module docstring).

    Args:
        config: a transformers PretrainedConfig (or a dict with its keys).
        dtype: torch.dtype or name of the weights and activations.
        length: tokens in one forward (the window, or a prompt with its key).
        kv_cache: add a KV cache of `length` tokens (generation with a cache).
        chunk_size: LM-head positions per chunk; None = the engine's default for the vocabulary.
        attn_impl: "sdpa"/"flash_attention_2"/"flex_attention" (no T×T matrix) or "eager".
        n_params: the exact parameter count when known (a loaded model); else from the config.
        prefill_chunk: C, the chunked prefill's chunk; None (or C ≥ length) = one-shot forward.

    Returns:
        {"weights", "activations", "lm_head_chunk", "kv_cache", "total"} in bytes, where
        total = weights + kv_cache + max(activations, lm_head_chunk).
    """
    if int(length) < 1:
        raise ValueError(f"length {length} must be a positive number of tokens.")
    shape = model_shape(config)
    b = dtype_bytes(dtype)
    T = int(length)
    windows = layer_windows(config)
    weights = (n_params if n_params is not None else parameter_count(shape)) * b
    if prefill_chunk is not None and int(prefill_chunk) < T:
        C = int(prefill_chunk)
        cat_copy = 2 * T * shape.kv_width * b if any(w is None for w in windows) else 0
        mask = C * T * (2 + b)  # the C×T mask, as the one-shot T×T one below
        activations = decoder_peak_bytes(shape, b, C, attn_impl, key_length=T) + mask + cat_copy
        head = head_phase_bytes(shape, b, C, chunk_size) + FP32 * T
        cache = kv_cache_bytes(shape, b, T, windows)
    else:
        # sliding layers under SDPA get an explicit T×T mask: bool, with its bool temporaries while
        # transformers builds it (2·T² at once), and the additive copy of the activations' dtype the
        # kernel makes inside (T²·b; seen in peak RSS, not by operator-level accounting)
        sliding_mask = T * T * (2 + b) if any(w is not None and w < T for w in windows) and \
            _attention_kind(attn_impl) != "eager" else 0
        activations = decoder_peak_bytes(shape, b, T, attn_impl) + sliding_mask
        head = head_phase_bytes(shape, b, T, chunk_size)
        cache = kv_cache_bytes(shape, b, T) if kv_cache else 0
    return {"weights": weights, "activations": activations, "lm_head_chunk": head, "kv_cache": cache,
            "total": weights + cache + max(activations, head)}


def format_bytes(n_bytes: float) -> str:
    """'≈ 17.3 GB' (decimal units: GB = 10⁹ bytes, MB = 10⁶, kB = 10³)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"≈ {n_bytes / size:.1f} {unit}"
    return f"≈ {n_bytes:.0f} B"


def format_estimate(estimate: Mapping[str, int]) -> str:
    """One line: '≈ 17.3 GB (weights ≈ 13.5 GB, activations ≈ 3.3 GB, LM head ≈ 0.6 GB, KV cache …)'."""
    parts = [f"weights {format_bytes(estimate['weights'])}",
             f"activations {format_bytes(estimate['activations'])}",
             f"LM head {format_bytes(estimate['lm_head_chunk'])}"]
    if estimate.get("kv_cache"):
        parts.append(f"KV cache {format_bytes(estimate['kv_cache'])}")
    return f"{format_bytes(estimate['total'])} ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# Measurement (for tests and benchmarks): the peak of one call, above what was alive before it
# ---------------------------------------------------------------------------------------------

def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field} line.")


def measure_tensor_peak_bytes(fn):
    """(fn(), peak, retained): the bytes of tensor storages that `fn` allocated, counted the way
    CUDA's allocator statistics count tensors (each storage's size, no allocator overhead, no
    kernel-internal scratch), on any device; `peak` is the most alive at once during the call,
    `retained` what is still alive when it returns (e.g. a KV cache in its result). Deterministic:
    it depends on the operators torch runs, not on the allocator or the CPU's instruction set.

    Every operator call is intercepted (torch's `TorchDispatchMode`, torch.utils._python_dispatch,
    the documented home of `__torch_dispatch__` modes); a storage an operator returns that is not one
    of its inputs' counts from then until the last tensor on it is freed. Views and in-place results
    of tensors from before the call (weights, the input) are not counted."""
    import torch  # lazy: the estimate above needs no torch (≈ 1.4 s); only the measuring helpers do
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Tracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.references: dict[int, int] = {}  # storage address → live tensors on it
            self.sizes: dict[int, int] = {}
            self.live = self.peak = 0

        def release(self, address: int) -> None:
            self.references[address] -= 1
            if not self.references[address]:
                del self.references[address]
                self.live -= self.sizes.pop(address)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor)}
            for tensor in tree_flatten(out)[0]:
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()
                address, size = storage.data_ptr(), storage.nbytes()
                if not address or not size:
                    continue
                if address not in self.references:
                    if address in inputs:
                        continue  # a view or in-place result of a tensor from before the call
                    self.references[address], self.sizes[address] = 0, size
                    self.live += size
                    self.peak = max(self.peak, self.live)
                self.references[address] += 1
                weakref.finalize(tensor, self.release, address)
            return out

    tracker = Tracker()
    with tracker:
        result = fn()
    return result, tracker.peak, tracker.live


def measure_peak_bytes(fn, device: str = "cpu"):
    """(fn(), peak bytes allocated during the call above those alive before it).

    CUDA: `torch.cuda.max_memory_allocated` after a peak reset (exact tensor bytes). CPU (Linux
    only): the resident-set high-water mark VmHWM after resetting it through
    `/proc/self/clear_refs`, minus VmRSS before the call. That counts tensor bytes exactly only
    when freed blocks go back to the OS at once: start the process with `MALLOC_MMAP_THRESHOLD_`
    set (e.g. 65536) so glibc serves every large allocation by mmap and unmaps it on free.
    """
    if str(device).startswith("cuda"):
        import torch  # lazy: as in `measure_tensor_peak_bytes`

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak RSS (Linux ≥ 4.0)
    before = _proc_status_bytes("VmRSS")
    result = fn()
    return result, _proc_status_bytes("VmHWM") - before
