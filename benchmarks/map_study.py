"""Do the orthogonal maps find the same alignments? Each map trained from several seeds at the same cells.

    python benchmarks/map_study.py --model standin --cells left_right:1:last left_right:2:last left_right:0:resp_colon
    python benchmarks/map_study.py --model smollm2-pricetag --best-of "12 24" "dollars last" --steps 40 \
        --batch-size 16 --n-train 128 --n-test 64 --threads 2     # chapter 8's grid and budget

For every cell (hypothesis, layer, position) and every map of das_lib.method.interventions.ORTHOGONAL_MAPS,
Boundless DAS is trained from each seed through das_lib's own grid (das_lib.runs.grid: same pairs, budget
and schedule for every map, records in a resumable store), and the table gives per cell and map: the mean IIA on the test
pairs, its spread over seeds (min to max), the gain over no intervention, the learned boundary size and
the training seconds. A map is "the same" as the matrix exponential (the paper's) when its mean IIA lies
within the exponential's seed spread at every cell (the rule of issue 19).

With --best-of LAYERS POSITIONS the cells are each hypothesis's best site of that grid, found by the first
map and seed on the validation pairs of another data seed (--select-data-seed), so that the cells
compared are not chosen on the pairs they are scored on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from das_lib.method.interventions import ORTHOGONAL_MAPS  # noqa: E402
from das_lib.method.training import TrainConfig  # noqa: E402
from das_lib.tasks.pricetag.game import HYPOTHESES  # noqa: E402
from das_lib.runs.grid import Grid, GridSpec  # noqa: E402
from das_lib.runs.sweep import frame, sweep_spec  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="standin")
    p.add_argument("--cells", nargs="*", default=[], help="hypothesis:layer:position, e.g. left_right:1:last")
    p.add_argument("--best-of", nargs=2, metavar=("LAYERS", "POSITIONS"), help="pick each hypothesis's best site of this grid")
    p.add_argument("--hypotheses", nargs="+", default=list(HYPOTHESES), help="with --best-of")
    p.add_argument("--select-data-seed", type=int, default=1, help="with --best-of: the pairs the cells are chosen on")
    p.add_argument("--maps", nargs="+", default=list(ORTHOGONAL_MAPS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--n-val", type=int, default=256, help="validation pairs (choose the cells with --best-of)")
    p.add_argument("--n-task", type=int, default=200)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--store", default=None, help="result store (default runs/map-study-MODEL)")
    p.add_argument("--json", default=None, help="write the table and the verdicts to this file")
    args = p.parse_args(argv)
    if not args.cells and not args.best_of:
        p.error("give --cells or --best-of")
    bad = [m for m in args.maps if m not in ORTHOGONAL_MAPS]
    if bad:
        p.error(f"unknown maps {bad}; choose from {list(ORTHOGONAL_MAPS)}")
    return args


def spec_for(args: argparse.Namespace, hypothesis: str, layers: tuple[int, ...], positions: tuple[str, ...],
             orthogonal_map: str, seeds: tuple[int, ...], data_seed: int) -> GridSpec:
    """The grid of one hypothesis at these layers and positions, trained with one map from `seeds`."""
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, orthogonal_map=orthogonal_map)
    return sweep_spec(args.model, [hypothesis], layers, positions, seeds=seeds, train=train, n_train=args.n_train,
                      n_test=args.n_test, n_val=args.n_val, n_task=args.n_task, data_seed=data_seed, dtype=args.dtype)


def best_cells(args: argparse.Namespace, store: Path) -> list[tuple[str, int, str]]:
    """Each hypothesis's site of the --best-of grid chosen on the validation pairs of the selection data seed, by the
    first map and seed."""
    layers = tuple(int(x) for x in args.best_of[0].split())
    positions = tuple(args.best_of[1].split())
    cells = []
    for h in args.hypotheses:
        grid = Grid(spec_for(args, h, layers, positions, args.maps[0], (args.seeds[0],), args.select_data_seed), store, args.device)
        grid.run()
        site = grid.chosen_sites()[h]
        cells.append((h, site.layer, site.position))
    return cells


def run(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, bool]]:
    """Train every (cell, map, seed); the per cell and map table and each map's verdict."""
    torch.set_num_threads(args.threads)
    store = Path(args.store or ROOT / "runs" / f"map-study-{args.model}")
    cells = [(h, int(l), p) for h, l, p in (c.split(":") for c in args.cells)] if args.cells else best_cells(args, store)
    rows = []
    for h, layer, position in cells:
        for m in args.maps:
            grid = Grid(spec_for(args, h, (layer,), (position,), m, tuple(args.seeds), args.data_seed), store, args.device)
            start = time.perf_counter()
            grid.run()
            runs = frame(grid)
            seconds = [grid.record(c)["results"]["seconds"] for c in grid.grid_cells()]
            rows.append({"cell": f"{HYPOTHESES[h].title} L{layer} {position}", "map": m,
                         "iia_mean": runs["iia"].mean(), "iia_min": runs["iia"].min(), "iia_max": runs["iia"].max(),
                         "gain_mean": (runs["iia"] - runs["unintervened"]).mean(),
                         "boundary_dims": runs["boundary_dims"].mean(), "train_s": sum(seconds) / len(seconds),
                         "seeds": len(runs), "wall_s": time.perf_counter() - start})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    reference = table[table["map"] == args.maps[0]].set_index("cell")
    verdicts = {}
    for m in args.maps[1:]:
        ours = table[table["map"] == m].set_index("cell")
        verdicts[m] = bool(((ours["iia_mean"] >= reference["iia_min"]) & (ours["iia_mean"] <= reference["iia_max"])).all())
    return table, verdicts


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, bool]]:
    """Run the study, print its table and verdicts, optionally write them as JSON."""
    args = parse(argv)
    table, verdicts = run(args)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
    for m, same in verdicts.items():
        print(f"{m}: {'the same as' if same else 'NOT the same as'} {args.maps[0]} (mean IIA within its seed spread at every cell)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": table.to_dict("records"), "verdicts": verdicts}, indent=2))
    return table, verdicts


if __name__ == "__main__":
    main()
