"""A model's zero-shot accuracy on the MCQA task (das_lib.tasks.mcqa), by setting.

    python benchmarks/mcqa_accuracy.py                       # SmolLM2-135M-Instruct, 500 fresh items a setting
    python benchmarks/mcqa_accuracy.py --model standin --template plain --n 100

For each setting (options, vocabulary split) the script draws `--n` fresh items from random.Random(--seed)
and prints the task's `accuracy`: over the answer letters (the readout of das_lib.method.readout) and over
the whole vocabulary (the paper's), beside chance (one in the number of options). The held-out rows ask only
about objects held out of a fine-tune's training (game.HELD_OUT_OBJECTS: two colours with all their objects,
and one object of every other colour); "held-out colours" is the part of them whose colour is held out.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from das_lib.models.load import load_model  # noqa: E402
from das_lib.tasks import make_task  # noqa: E402
from das_lib.tasks.mcqa.game import HELD_OUT_COLOURS  # noqa: E402

SETTINGS = (("4 options", 4, "all"), ("3 options", 3, "all"), ("4 options, train vocabulary", 4, "train"),
            ("4 options, held out", 4, "held_out"))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--template", default="chat", choices=("chat", "plain"))
    p.add_argument("--n", type=int, default=500, help="fresh items per setting")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    rows = []
    for name, n_options, split in SETTINGS:
        task = make_task("mcqa", tokenizer, {"template": args.template, "n_options": n_options, "split": split})
        rng = random.Random(args.seed)
        items = [task.sample_input(rng) for _ in range(args.n)]
        parts = {name: items}
        if split == "held_out":
            parts["  of which held-out colours"] = [x for x in items if x["colour"] in HELD_OUT_COLOURS]
        for label, group in parts.items():
            acc = task.accuracy(model, group)
            rows.append({"setting": label, "items": len(group), "answers": round(acc["answers"], 3),
                         "vocabulary": round(acc["vocabulary"], 3), "chance": round(1 / n_options, 3)})
    table = pd.DataFrame(rows).set_index("setting")
    print(f"model {args.model}, template {args.template}, seed {args.seed}, "
          f"{time.perf_counter() - start:.0f} s with {args.threads} thread(s)")
    print(table.to_string())
    return table


if __name__ == "__main__":
    main()
