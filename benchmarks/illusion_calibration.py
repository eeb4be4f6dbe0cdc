"""Calibrating the illusion check (das_lib.method.illusion) where the truth is known: the planted stand-in.

The stand-in has Left and Right Boundary planted at layer 1, last token, each in a known 4-dim subspace.
For the left boundary's test pairs this prints, case by case, the check's table (U and each part patched
alone: IIA, gain over doing nothing with its 95% interval, off-manifold ratio), its dose-response and its
verdict, then one summary table:

- the planted subspace at the planted site;
- Boundless DAS trained at the planted site, with its part inside and outside the planted subspace;
- Boundless DAS trained at layer 0, last token, where nothing is planted;
- the illusory direction (a + b) / sqrt(2) built on purpose (das_lib.method.illusory) in the stand-in as it
  is, and in copies whose layers above read the dormant direction a `factor` times as strongly (the
  stand-in reads its dormant directions too weakly for the illusion to move many answers), with the planted
  subspace checked in the same copies.

Usage: PYTHONPATH=. python benchmarks/illusion_calibration.py [--test-pairs 1024] [--pool-pairs 256]
       [--train-pairs 512] [--steps 300] [--factors 9 17] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from das_lib.method import illusion, illusory
from das_lib.method.fastpath import make_forward
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.sites import Site
from das_lib.method.training import TrainConfig, answer_tokens_under, train_intervention
from das_lib.models.load import load_model
from das_lib.models.standin.planted import load_planted
from das_lib.tasks.pricetag.game import sample_pairs
from das_lib.tasks.pricetag.task import PriceTagTask

POOL_SEED, TEST_SEED, TRAIN_SEED = 3, 7, 11
COLUMNS = ["part", "dims", "share", "iia", "gain", "gain_low", "gain_high", "off_manifold"]


def interval(value: float, low: float, high: float) -> str:
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def show(name: str, diagnosis: illusion.Diagnosis, notes: dict[str, dict[str, float]] | None = None) -> dict:
    """Print one case and return its summary row."""
    print(f"\n### {name}")
    for direction, numbers in (notes or {}).items():
        print(f"{direction}: " + ", ".join(f"{k} {v:.3g}" for k, v in numbers.items()))
    print(diagnosis.table[COLUMNS].round(3).to_string(index=False))
    print("dose-response (U's top-m variance directions):")
    print(diagnosis.dose.round(3).to_string(index=False))
    verdict = illusion.reading(diagnosis)
    print(f"verdict: {verdict['verdict']}")
    row = {"case": name, "dims": int(diagnosis.row("whole").dims), "iia": round(diagnosis.row("whole").iia, 3)}
    for part in ("whole", "connected", "disconnected", "read_and_active"):
        r = diagnosis.row(part)
        row[part if part != "whole" else "gain"] = f"{int(r.dims)}d " + interval(r.gain, r.gain_low, r.gain_high)
    return {**row, "off_manifold": round(diagnosis.row("whole").off_manifold, 1), "verdict": verdict["verdict"]}


def trained_subspace(model, task, site: Site, args) -> torch.Tensor:
    """Boundless DAS for the left boundary at `site`, trained as das_lib trains it; its learned subspace."""
    train = task.interchange_data(sample_pairs("left", args.train_pairs, seed=TRAIN_SEED), site.position)
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(model.config.hidden_size)
    forward = make_forward(model, site, intervention, [train])
    train_intervention(forward, intervention, train, TrainConfig(steps=args.steps), progress=False)
    return illusion.learned_subspace(intervention, 0)


def illusion_cases(model, site: Site, pool, games: list, test, spaces: illusion.SiteSpaces, planted_left: torch.Tensor,
                   factors: list[float]) -> list[dict]:
    """The illusion built on purpose, in the stand-in and in copies reading its dormant direction `factor` times as
    strongly (with the planted subspace checked in each copy); `games`: the pool's games in the order of its states."""
    states = torch.cat(illusion.site_states(model, site, pool))
    left = torch.tensor([g["amount"] >= g["lb"] for g in games])
    a, b, v = illusory.construct(states, left, spaces)
    notes = {"a (dormant)": illusory.profile(a, spaces, states, left),
             "b (disconnected)": illusory.profile(b, spaces, states, left),
             "d (left's mean difference, for scale)": illusory.profile(illusory.mean_difference(states, left), spaces,
                                                                       states, left)}
    rows = [show("illusion (a + b)/sqrt 2, stand-in as it is", illusion.diagnose(model, site, v, test, spaces), notes)]
    nothing = illusion.FixedSubspace(torch.zeros(spaces.d, 0))
    natural = answer_tokens_under(make_forward(model, site, nothing, [pool]), pool)
    for factor in factors:
        copy = illusory.amplified_copy(model, site, a, factor, spaces)  # runs on the plain path (fast=False)
        copy_spaces = illusion.site_spaces(copy, site, pool, fast=False)
        answers = answer_tokens_under(make_forward(copy, site, nothing, [pool], fast=False), pool)
        notes = {"a (dormant)": illusory.profile(a, copy_spaces, states, left),
                 "b (disconnected)": illusory.profile(b, copy_spaces, states, left),
                 "copy": {"read dims": copy_spaces.read.shape[1], "answers changed": int((answers != natural).sum()),
                          "of prompts": len(pool)}}
        rows.append(show(f"illusion (a + b)/sqrt 2, copy reading a x{factor:g}",
                         illusion.diagnose(copy, site, v, test, copy_spaces, fast=False), notes))
        rows.append(show(f"planted subspace, copy reading a x{factor:g}",
                         illusion.diagnose(copy, site, planted_left, test, copy_spaces, fast=False)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-pairs", type=int, default=1024)
    parser.add_argument("--pool-pairs", type=int, default=256)
    parser.add_argument("--train-pairs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--factors", type=float, nargs="*", default=[9.0, 17.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model("standin")
    planted, meta = load_planted()
    task = PriceTagTask(tokenizer, "standin")
    planted_site = Site(meta["site"]["layer"], meta["site"]["position"])
    planted_left = illusion.learned_subspace(planted, 0)
    pool_pairs = sample_pairs("left_right", args.pool_pairs, seed=POOL_SEED)
    test_pairs = sample_pairs("left", args.test_pairs, seed=TEST_SEED)
    pool = task.interchange_data(pool_pairs, "last")
    test = task.interchange_data(test_pairs, "last")
    spaces = illusion.site_spaces(model, planted_site, pool)
    print(f"stand-in, left boundary; pool {args.pool_pairs} pairs ({2 * args.pool_pairs} states, {args.pool_pairs} "
          f"gradients), {args.test_pairs} test pairs; read share {spaces.read_share}, active share "
          f"{spaces.active_share}, min norm {illusion.MIN_NORM}")
    print(f"{planted_site}: read space {spaces.read.shape[1]} dims, pool's dormant space "
          f"{spaces.dormant_space().shape[1]} of {spaces.d} dims; typical per-dimension sd "
          f"{spaces.mean_variance() ** 0.5:.2f}, margin sd {spaces.margin_spread:.2f}")
    top = illusion.variance_directions(planted_left, spaces)[0][:, 0]
    leak = {"U's top-variance direction": {"energy share in the pool's dormant space":
                                           float((spaces.dormant_space().T @ top).pow(2).sum())}}
    rows = [show(f"planted subspace at {planted_site}",
                 illusion.diagnose(model, planted_site, planted_left, test, spaces), leak)]

    learned = trained_subspace(model, task, planted_site, args)
    rows.append(show(f"Boundless DAS at {planted_site} (planted)",
                     illusion.diagnose(model, planted_site, learned, test, spaces,
                                       references={"planted": planted_left})))

    empty_site = Site(0, "last")
    empty_spaces = illusion.site_spaces(model, empty_site, pool)
    print(f"\n{empty_site}: read space {empty_spaces.read.shape[1]} dims, pool's dormant space "
          f"{empty_spaces.dormant_space().shape[1]} dims")
    learned = trained_subspace(model, task, empty_site, args)
    rows.append(show(f"Boundless DAS at {empty_site} (nothing planted)",
                     illusion.diagnose(model, empty_site, learned, test, empty_spaces)))

    rows += illusion_cases(model, planted_site, pool, [*(p.base for p in pool_pairs), *(p.source for p in pool_pairs)],
                           test, spaces, planted_left, args.factors)
    print("\n### Summary (gain: IIA minus doing nothing's, pair by pair, 95% paired-bootstrap interval)")
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"\n{time.perf_counter() - start:.0f} s on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
