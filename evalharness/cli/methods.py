"""`methods`: each method's frequency table summary for a model (or given |D|, base and L)."""
from __future__ import annotations

import argparse

from .. import models
from ..errors import UsageError
from ..methods import check_dims, describe
from ..options import bounded_count, checked_text, finite_number, parse_factors
from ..runner import resolve_specs
from ..scaling import layer_rope_bases, rotary_modules
from .common import EXIT_OK, build_specs

ALL_METHODS = "base,pi,ntk,ntk-by-parts,yarn,dynamic-pi,dynamic-ntk,dynamic-yarn"

METHODS_LEGEND = """
s             scale factor (dynamic methods: max(1, l/L) at the length l above)
ramp          NTK-by-parts / YaRN ramp bounds as dimension-pair indices: pairs below the first keep their
              frequency, pairs above the second are interpolated fully (θ/s), the ramp blends between; - = none
inv_freq[0]   the highest frequency θ_0 (radians per token)
inv_freq[-1]  the lowest frequency θ_(|D|/2-1)
max λ         the longest wavelength 2π/θ_(|D|/2-1), in tokens
interp.       how many of the {pairs} dimension pairs are interpolated fully (θ/s)
attn          attention scale √(1/t) applied to the logits (YaRN: 0.1·ln(s)+1; 1 = none)"""


def add_methods_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="read |D|, rope base and L from this model's config (default: none; give the three below)")
    p.add_argument("--method", default=ALL_METHODS, help="comma list of methods, as eval's --method "
                                                         "(default: %(default)s)")
    p.add_argument("--factor", type=checked_text("--factor", parse_factors), default="2",
                   help="comma list of scale factors s (default: %(default)s)")
    p.add_argument("--original-ctx", type=bounded_count("--original-ctx"), default=None,
                   help="pre-trained context L (default: the model's)")
    p.add_argument("--rotary-dim", type=bounded_count("--rotary-dim", 2, 65536), default=None,
                   help="rotary dimension |D| (default: the model's)")
    p.add_argument("--rope-theta", type=finite_number("--rope-theta", 1e12), default=None,
                   help="RoPE base b (default: the model's)")
    p.add_argument("--seq-len", type=bounded_count("--seq-len"), default=None,
                   help="sequence length at which dynamic methods are shown (default: 2 × L)")


def shipped_frequencies(model):
    """(inv_freq float32, attention scale) of the model's first rotary module as loaded: what
    `--method native` runs."""
    _, _, module = rotary_modules(model)[0]
    # one module per layer type keeps `<type>_inv_freq`: the table shows the full-attention layers
    prefix = "" if hasattr(module, "inv_freq") else "full_attention_"
    if getattr(module, f"{prefix}inv_freq").is_meta:  # a weightless model: the library rebuilds its buffers
        module = type(module)(config=module.config)
    return (getattr(module, f"{prefix}inv_freq").detach().float().cpu(),
            float(getattr(module, f"{prefix}attention_scaling", 1.0)))


def number_text(value) -> str:
    """A ramp bound as the table shows it: two decimals unless whole."""
    return f"{value:.2f}" if isinstance(value, float) and not float(value).is_integer() else str(int(value))


def cmd_methods(args: argparse.Namespace) -> int:
    rotary_dim, theta, native = args.rotary_dim, args.rope_theta, args.original_ctx
    model, banner = None, None
    build_specs(args.method, args.factor, None)  # the method list is checked before a model loads
    if args.model:
        model, _, info = models.load(args.model, dtype="float32", device="cpu", weights=False)
        rotary_dim = info.rotary_dim if rotary_dim is None else rotary_dim
        theta = info.rope_theta if theta is None else theta
        native = info.native_ctx if native is None else native
        bases = layer_rope_bases(model.config)
        thetas = ", ".join(f"{t} {b:g}" for t, b in bases.items()) if bases else f"{info.rope_theta:g}"
        banner = (f"{info.name}: {info.architecture}, |D|={info.rotary_dim}, rope_theta={thetas}, "
                  f"native context {info.native_ctx}" + ("; the table is for the full-attention layers "
                                                         "(--rope-theta for another base)" if bases else ""))
    if rotary_dim is None or theta is None or native is None:
        raise UsageError("methods needs --model, or all of --rotary-dim, --rope-theta and --original-ctx.")
    check_dims(rotary_dim, theta)
    specs = build_specs(args.method, args.factor, native)
    if model is not None:
        specs = resolve_specs(model, specs)  # `native`: the RoPE the model ships
    elif any(spec.method == "native" for spec in specs):
        raise UsageError("--method native is the RoPE a model ships with; give --model to show it.")
    seq_len = args.seq_len or 2 * native
    rows = [(spec, describe(spec, rotary_dim, theta, seq_len if spec.is_dynamic else None,
                            frequencies=shipped_frequencies(model) if spec.method == "native" else None))
            for spec in specs]  # every row computed (and checked) before anything is printed
    header = (f"{'spec':<16}{'s':>7}{'ramp':>10}{'inv_freq[0]':>13}{'inv_freq[-1]':>14}{'max λ':>12}"
              f"{'interp.':>9}{'attn':>8}")
    if banner:
        print(banner)
    print(f"|D|={rotary_dim}, b={theta:g}, L={native}; dynamic methods shown at l={seq_len}")
    print(header)
    for spec, row in rows:
        ramp = "-" if row["ramp_low"] is None else f"{number_text(row['ramp_low'])}/{number_text(row['ramp_high'])}"
        print(f"{spec.short:<16}{row['scale']:>7.3g}{ramp:>10}{row['inv_freq_first']:>13.6g}{row['inv_freq_last']:>14.6g}"
              f"{row['max_wavelength']:>12.6g}{row['pairs_interpolated']:>9}{row['attention_scale']:>8.4f}")
    print(METHODS_LEGEND.format(pairs=rotary_dim // 2))
    return EXIT_OK
