"""Write the passkey prompts that passkey_local reads (the YaRN paper's prompt text).

    python -m evalharness.leaderboard.make_prompts --tokenizer random:tiny --lengths 256,512 \
        --trials 5 --seed 0 --out leaderboard_data/passkey/test.jsonl

Each prompt has at most LENGTH tokens as --tokenizer encodes it (lm-eval encodes the same way), the
most filler that fits, a seeded 5-digit key at a seeded uniform depth. --tokenizer takes a model
reference of evalharness.models.load (hub id, local folder, .gguf, smollm2-135m, random:NAME).
"""
from __future__ import annotations

import argparse
import sys

from transformers import AutoTokenizer

from .. import models
from .passkey_data import passkey_documents, write_jsonl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--lengths", required=True, help="comma list of prompt lengths in tokens")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.tokenizer.startswith("random:"):
        tokenizer = models.build_byte_tokenizer()
    elif args.tokenizer.endswith(".gguf") or args.tokenizer in ("smollm2-135m",):
        _, tokenizer, _ = models.load(args.tokenizer, dtype="float32", device="cpu")
    else:  # hub id or local folder: the tokenizer alone
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    docs = passkey_documents(tokenizer, lengths, args.trials, args.seed)
    print(f"{len(docs)} prompts → {write_jsonl(args.out, docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
