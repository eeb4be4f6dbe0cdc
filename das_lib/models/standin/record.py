"""Measuring the stand-in on fresh games, and writing and reading the directory shipped as das_lib/assets/standin."""
from __future__ import annotations

import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from das_lib import paper
from das_lib.method.interventions import save_intervention
from das_lib.models.records import read_record, write_record
from das_lib.models.load import STANDIN_DIR, TEMPLATE_KEY, default_template, load_model
from das_lib.models.standin.config import StandinConfig
from das_lib.models.standin.corpus import sample_context
from das_lib.models.standin.planted import EVAL_SEED, PLANTED, planted_iia, planted_meta, planted_subspace
from das_lib.models.standin.train import train
from das_lib.tasks.pricetag import game as pricetag
from das_lib.tasks.pricetag.task import PriceTagTask, model_answers

TRAINING_RECORD = "standin_training.json"
TARGETS = {"yesno": 0.98, "truefalse": 0.95, "yesno_context": 0.95, "truefalse_context": 0.95}
SOLVES = 0.95  # a stand-in solves the game when it answers at least this share of fresh games in every setting
REGION_NAMES = {1: "below", 2: "inside", 3: "above"}


def eval_settings(seed: int = EVAL_SEED, n_contexts: int = 8) -> dict[str, tuple[str, list[str | None]]]:
    """The trained settings: name -> (instruction variant, contexts), contexts freshly drawn from the pool."""
    rng = random.Random(seed)
    contexts = [sample_context(rng) for _ in range(n_contexts)]
    return {
        "yesno": ("yesno", [None]),
        "truefalse": ("truefalse", [None]),
        "yesno_context": ("yesno", contexts),
        "truefalse_context": ("truefalse", contexts),
    }


def untrained_settings() -> dict[str, tuple[str, list[str | None]]]:
    """The paper's two irrelevant contexts, which training never saw (the robustness chapter uses them)."""
    return {"yesno_pricing_tag": ("yesno", [paper.CONTEXTS[0]]), "yesno_frogs": ("yesno", [paper.CONTEXTS[1]])}


def correct_by_game(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    games: Sequence[dict[str, int]],
    settings: dict[str, tuple[str, list[str | None]]],
) -> pd.DataFrame:
    """One row per (setting, game): setting, region (below/inside/above) and whether the answer was right.

    In a setting with several contexts, game k gets context k mod their number.
    """
    rows = []
    for name, (variant, contexts) in settings.items():
        for k, context in enumerate(contexts):
            picked = games[k :: len(contexts)]
            if not picked:  # fewer games than contexts
                continue
            correct = model_answers(model, PriceTagTask(tokenizer, template, variant, context), picked)
            rows += [{"setting": name, "region": REGION_NAMES[pricetag.region_of(g)], "correct": bool(c)}
                     for g, c in zip(picked, correct.tolist())]
    return pd.DataFrame(rows)


def measure(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, n_games: int = 1000, seed: int = EVAL_SEED) -> dict[str, float]:
    """The stand-in's task accuracy on `n_games` fresh games in each trained setting."""
    rng = random.Random(seed)
    games = [pricetag.sample_game(rng) for _ in range(n_games)]
    table = correct_by_game(model, tokenizer, "standin", games, eval_settings(seed))
    return {name: round(float(acc), 4) for name, acc in table.groupby("setting", sort=False)["correct"].mean().items()}



def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, record: dict, out_dir: Path | str) -> Path:
    """Write model, tokenizer (marked with its template) and the training record to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.init_kwargs[TEMPLATE_KEY] = "standin"  # so default_template knows how to prompt it
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_record(out_dir, TRAINING_RECORD, record)
    return out_dir


def load_record(model_dir: Path | str = STANDIN_DIR) -> dict:
    """The training record shipped with the stand-in: config, seconds and measured accuracies."""
    return read_record(model_dir, TRAINING_RECORD, "python -m das_lib.models.standin")


def build(cfg: StandinConfig, out_dir: Path | str, n_eval: int = 1000, log_every: int = 100) -> dict:
    """Train the stand-in from `cfg`, measure it on fresh games, and save it; returns the record."""
    model, tokenizer, record = train(cfg, log_every)
    record["accuracy"] = measure(model, tokenizer, n_eval)
    record["n_eval"] = n_eval
    record["solves_game"] = {"floor": SOLVES, "solves": min(record["accuracy"].values()) >= SOLVES}
    record["torch"] = torch.__version__
    planted = planted_subspace(cfg) if cfg.iit_rate > 0 else None
    if planted is not None:
        record["planted_iia"] = planted_iia(model, tokenizer, planted, planted_meta(cfg), n_eval)
    save(model, tokenizer, record, out_dir)
    if planted is not None:
        save_intervention(planted, Path(out_dir) / PLANTED, planted_meta(cfg))
    return record


def problems(record: dict) -> list[str]:
    """Why a built stand-in cannot serve as a model with a known mechanism (empty when it can): a setting whose
    fresh games it answers below SOLVES, or a planted mechanism that did not take."""
    below = {k: v for k, v in record["accuracy"].items() if v < SOLVES}
    found = [f"it answers {v:.3f} of fresh {k} games, below {SOLVES}" for k, v in below.items()]
    took = record["planted_iia"].get("took") if "planted_iia" in record else True  # None: an older record
    if took is not True:
        found.append("the plant did not take: swapping the planted subspace does no better than doing nothing"
                     if took is False else "the record does not say whether the plant took (it predates that check)")
    return found


def training_mix(model_dir: Path | str = STANDIN_DIR) -> dict[str, float | bool]:
    """What the stand-in met in training, from its record: the share of examples with the sibling instruction
    and with an irrelevant context, and whether a mechanism was planted (on plain yes/no prompts only)."""
    config = load_record(model_dir)["config"]
    variants = config.get("variant_mix", {"yesno": 1})
    context = config.get("context_rate", 0.0) * (1 - config.get("context_after", 0.0))  # contexts start late
    return {"sibling": variants.get("truefalse", 0.0) / max(1e-9, sum(variants.values())), "context": context,
            "planted": config.get("iit_rate", 0.0) > 0}


# --- Chapter 3's steps: the shipped record, accuracy by setting and region, a retraining compared ---


def record_values(record: dict, model_dir: Path | str = STANDIN_DIR) -> dict[str, float | int]:
    """The numbers chapter 3 quotes from a training record (and the size of the model's directory, in MB)."""
    config = record["config"]
    return {
        "train_steps": config["steps"], "train_seconds": record["train_seconds"],
        "train_cpu_seconds": record["train_cpu_seconds"],
        "asset_mb": sum(f.stat().st_size for f in Path(model_dir).iterdir()) / 2**20,
        "hard_share": config["hard_rate"], "sibling_share": training_mix(model_dir)["sibling"],
        "context_after": config["context_after"], "context_rate": config["context_rate"],
        "layers": config["num_layers"], "width": config["hidden_size"], "heads": config["num_heads"],
        "iit_share": config["iit_rate"], "iit_layer": config["iit_layer"], "iit_dims": config["iit_dims"],
        "train_threads": config["threads"],
    }


def record_table(record: dict) -> pd.DataFrame:
    """A training record's config and its training seconds, one row each."""
    return pd.Series({**record["config"], "training seconds (wall clock)": record["train_seconds"],
                      "training seconds (CPU)": record["train_cpu_seconds"]}, name="value").to_frame()


def accuracy_by_setting(correct: pd.DataFrame) -> pd.Series:
    """Accuracy per setting of a `correct_by_game` table, in its order."""
    return correct.groupby("setting", sort=False)["correct"].mean()


def headline_accuracy(by_setting: pd.Series) -> dict[str, float]:
    """Accuracy on yes/no, the sibling, a pool context, and the lower of the paper's two untrained contexts."""
    return {"task_acc": float(by_setting["yesno"]), "sibling_acc": float(by_setting["truefalse"]),
            "context_acc": float(by_setting["yesno_context"]),
            "untrained_context_acc": float(by_setting[["yesno_pricing_tag", "yesno_frogs"]].min())}


def accuracy_table(correct: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per setting (rows) and region of the amount (below, inside, above the bracket), and overall."""
    by_region = correct.pivot_table(index="setting", columns="region", values="correct", aggfunc="mean", sort=False)
    return by_region[[r for r in REGION_NAMES.values() if r in by_region]].assign(all=accuracy_by_setting(correct))


def correct_by_name(name: str, games: Sequence[dict[str, int]], settings: dict[str, tuple[str, list[str | None]]],
                    device: str = "cpu", dtype: str = "float32") -> pd.DataFrame:
    """`correct_by_game` for a model loaded by name (`load_model`), with the template that suits it."""
    model, tokenizer = load_model(name, device, dtype)
    return correct_by_game(model, tokenizer, default_template(tokenizer), games, settings)


def accuracy_frame(corrects: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Accuracy per setting (rows) of several models (columns; name -> `correct_by_game` table)."""
    return pd.DataFrame({name: accuracy_by_setting(c) for name, c in corrects.items()})


def retrain_comparison(record: dict, steps: int = 0, n_eval: int = 0, threads: int = 0) -> pd.DataFrame:
    """Retrain the stand-in from a record's config and seed (`steps` > 0: that many steps instead; `threads` > 0:
    on that many torch threads, else the record's) in a temporary directory, measure it on `n_eval` games per
    setting (0: as many as the record), and set its steps, threads, seconds, accuracies and planted IIA beside
    the record's."""
    # A chapter run beside another has one core: two threads sharing it wait on each other at every step
    # (the smoke's 2 steps took 28 s on the record's 2 threads, 1.6 s on one).
    config = StandinConfig(**record["config"])
    config = replace(config, steps=steps or config.steps, threads=threads or config.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = build(config, tmp, n_eval=n_eval or record["n_eval"], log_every=max(1, config.steps // 10))
    row = lambda r: {"steps": r["config"]["steps"], "threads": r["config"]["threads"],  # noqa: E731
                     "training seconds": r["train_seconds"],
                     "training seconds (CPU)": r["train_cpu_seconds"], **r["accuracy"],
                     **({"planted IIA": r["planted_iia"]["planted"]} if "planted_iia" in r else {})}
    comparison = pd.DataFrame({"shipped": row(record), "retrained": row(rebuilt)})
    return comparison.assign(difference=comparison["retrained"] - comparison["shipped"])
