"""A pretrained model fine-tuned on the price-tagging game with a LoRA adapter: SmolLM2-135M-Instruct, Gemma 3 270M.

Unlike the stand-in (das_lib.models.standin), nothing is planted here: the model is trained only to answer
the plain yes/no game in its own chat template, with no interventions, no sibling instruction, no
irrelevant contexts and no fixed brackets, so whatever mechanism the search chapters find was learnt,
and the robustness study tests what the model generalises from pretraining (as for Alpaca 7B).

Read top to bottom: the configuration, the training loop (LoRA on every linear layer of every decoder
layer, loss on the answer token only, fresh games every step), the measurements, and `build`, which
writes an adapter and its training record to a folder: `python -m das_lib.models.finetune` trains one on
SmolLM2 (about 30 minutes on two cores; `base=gemma3-270m` for Gemma 3, which the same recipe does not teach
the game: benchmarks/README.md) into a new folder under .cache/finetune/ (`load_model(FOLDER)` loads it); only
`--out das_lib/assets/...` writes over a shipped adapter (and so changes the model identity of every stored
record of it). `load_model("smollm2-pricetag")` merges the shipped adapter into the base weights and returns a
plain `LlamaForCausalLM`. The shipped adapters and the settings that retrain them: `load.SHIPPED_ADAPTERS`.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from das_lib.models import standin
from das_lib.models.game_training import GameTraining, config_from_args, lr_at, sample_training_game
from das_lib.models.load import CACHE_DIR, SHIPPED_ADAPTERS, SMOLLM2_PRICETAG_DIR, load_model
from das_lib.models.records import write_record
from das_lib.tasks.pricetag import game as pricetag
from das_lib.tasks.pricetag.task import PriceTagTask

ADAPTER_DIR = SMOLLM2_PRICETAG_DIR
TRAINING_RECORD = "finetune_training.json"
TARGET = 0.95  # yes/no accuracy on fresh games the shipped adapter must reach (Alpaca 7B: 0.85-0.92)
EVAL_SEED = standin.EVAL_SEED  # fresh games: training draws from random.Random(seed + 1)


@dataclass
class FinetuneConfig(GameTraining):
    """Everything that determines the fine-tuned model: base model, adapter shape and optimisation (and
    `GameTraining`'s)."""

    base: str = "smollm2"  # a name `load_model` understands
    steps: int = 320
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_config(cfg: FinetuneConfig) -> LoraConfig:
    """The adapter: rank-`lora_r` updates of every linear map of every decoder layer (no dropout)."""
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


def sample_games(rng: random.Random, cfg: FinetuneConfig) -> list[dict[str, int]]:
    """One step's games, Yes/No balanced, half of them close to a bound (as for the stand-in)."""
    return [sample_training_game(rng, cfg) for _ in range(cfg.batch_size)]


def train(cfg: FinetuneConfig, log_every: int = 25) -> tuple[PeftModel, PreTrainedTokenizerBase, dict]:
    """Fine-tune a LoRA adapter on `cfg.base` from `cfg.seed`; returns (peft model, tokenizer, record)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # restored below: the caller's setting is the caller's
    try:
        return _train(cfg, log_every)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: FinetuneConfig, log_every: int) -> tuple[PeftModel, PreTrainedTokenizerBase, dict]:
    """The training loop of `train`, run with `cfg.threads` threads."""
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_model(cfg.base)
    model = get_peft_model(base, lora_config(cfg))  # only the adapter's matrices require gradients
    task = PriceTagTask(tokenizer, "chat", "yesno")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed + 1)
    log = []
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        games = sample_games(rng, cfg)
        answers = torch.tensor([task.answer_id(pricetag.task_label(g)) for g in games], device="cpu")
        logits = model(**task.encode(games), logits_to_keep=1).logits[:, -1]  # only the answer token is trained
        loss = torch.nn.functional.cross_entropy(logits, answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        log.append({"step": step + 1, "loss": round(loss.item(), 5),
                    "batch_acc": round((logits.argmax(-1) == answers).float().mean().item(), 4)})
        if log_every and (step + 1) % log_every == 0:
            recent = log[-log_every:]
            print(f"step {step + 1}/{cfg.steps}  loss {sum(r['loss'] for r in recent) / len(recent):.4f}  "
                  f"batch acc {sum(r['batch_acc'] for r in recent) / len(recent):.3f}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    record = {"config": asdict(cfg), "train_seconds": round(time.perf_counter() - start, 1),
              "train_cpu_seconds": round(time.process_time() - cpu_start, 1), "threads": cfg.threads, "log": log}
    return model, tokenizer, record


# ---------------------------------------------------------------------------------------------
# Measuring and shipping


def eval_settings(seed: int = EVAL_SEED) -> dict[str, tuple[str, list[str | None]]]:
    """Where the fine-tuned model is measured: the trained game, and settings it never trained on."""
    trained = standin.eval_settings(seed)
    return {"yesno": trained["yesno"], "truefalse": trained["truefalse"],
            "yesno_context": trained["yesno_context"], **standin.untrained_settings()}


def measure(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, n_games: int = 1000, n_other: int = 200,
            seed: int = EVAL_SEED) -> dict[str, float]:
    """Accuracy on `n_games` fresh games of the trained yes/no game, and on the first `n_other` of them in
    each other setting of `eval_settings` (fewer: on two cores a 135M model reads ~5 prompts a second)."""
    rng = random.Random(seed)
    games = [pricetag.sample_game(rng) for _ in range(max(n_games, n_other))]
    settings = eval_settings(seed)
    tables = [standin.correct_by_game(model, tokenizer, "chat", games[:n_games], {"yesno": settings.pop("yesno")}),
              standin.correct_by_game(model, tokenizer, "chat", games[:n_other], settings)]
    table = pd.concat(tables)
    return {name: round(float(acc), 4) for name, acc in table.groupby("setting", sort=False)["correct"].mean().items()}


def save(model: PeftModel, record: dict, out_dir: Path | str) -> Path:
    """Write the adapter (peft's save_pretrained: adapter_config.json + adapter_model.safetensors) and
    the training record; the adapter names its base by its das_lib name, so `load_model` can find it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = record["config"]["base"]
    model.save_pretrained(out_dir)
    write_record(out_dir, TRAINING_RECORD, record)
    return out_dir


def record_or_none(model_dir: Path | str) -> dict | None:
    """The training record of a model folder fine-tuned here (config, seconds, loss log, accuracies), or None
    for any other model (the stand-in, SmolLM2, a checkpoint): they have none."""
    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"training record {path} is not valid JSON ({err}): it is truncated or damaged") from None


def load_record(adapter_dir: Path | str = ADAPTER_DIR) -> dict:
    """The training record of a fine-tuned adapter (by default the shipped one); a FileNotFoundError without one."""
    record = record_or_none(adapter_dir)
    if record is not None:
        return record
    path = Path(adapter_dir) / TRAINING_RECORD
    for folder, settings in SHIPPED_ADAPTERS.values():
        if Path(adapter_dir).resolve() == folder.resolve():  # a shipped adapter lost its record
            raise FileNotFoundError(f"no training record at {path}: restore the shipped adapter with `git checkout -- "
                                    f"{folder}`, or retrain it with `python -m das_lib.models.finetune --out {folder} {settings}`")
    raise FileNotFoundError(f"no training record at {path}: only a model fine-tuned by das_lib.models.finetune has "
                            "one (use finetune.record_or_none where a model may have none)")


# What each measured setting of the record is, for a reader.
SETTING_NAMES = {"yesno": "yes/no game (trained)", "truefalse": "sibling instruction True/False (never trained)",
                 "yesno_context": "yes/no after a fresh irrelevant context (never trained)",
                 "yesno_pricing_tag": "yes/no after 'Pricing tag game!' (never trained)",
                 "yesno_frogs": "yes/no after 'Fruitarian Frogs ...' (never trained)"}


def record_summary(record: dict) -> tuple[dict[str, float], pd.DataFrame]:
    """The training record's headline numbers (task, sibling and context accuracy, training time and
    size, games measured) and its accuracy per setting as a table with readable setting names."""
    accuracy = record["accuracy"]
    numbers = {"task_acc": accuracy["yesno"], "sibling_acc": accuracy["truefalse"], "context_acc": accuracy["yesno_context"],
               "train_seconds": record["train_seconds"], "train_cpu_seconds": record["train_cpu_seconds"],
               "train_minutes": record["train_seconds"] / 60, "train_steps": record["config"]["steps"],
               "batch_size": record["config"]["batch_size"], "n_eval": record["n_eval"], "n_eval_other": record["n_eval_other"]}
    return numbers, pd.DataFrame({"accuracy": accuracy}).rename(index=SETTING_NAMES)


def build(cfg: FinetuneConfig, out_dir: Path | str, n_eval: int = 1000, n_other: int = 200, log_every: int = 25) -> dict:
    """Fine-tune from `cfg`, measure the merged model on fresh games, and save the adapter; returns the record."""
    model, tokenizer, record = train(cfg, log_every)
    save(model, record, out_dir)
    merged, tokenizer = load_model(str(out_dir))  # measured as users get it: merged into a plain Llama
    start = time.perf_counter()
    record["accuracy"] = measure(merged, tokenizer, n_eval, n_other)
    record["n_eval"], record["n_eval_other"] = n_eval, n_other
    record["eval_seconds"] = round(time.perf_counter() - start, 1)
    record["torch"] = torch.__version__
    write_record(out_dir, TRAINING_RECORD, record)
    return record


def default_out() -> Path:
    """A new folder for a fine-tuning run: .cache/finetune/<date-time> (never das_lib/assets)."""
    return CACHE_DIR / "finetune" / time.strftime("%Y%m%d-%H%M%S")


def main(argv: list[str] | None = None) -> Path:
    """`python -m das_lib.models.finetune [--out DIR] [key=value ...]`: train, measure and save an adapter."""
    parser = argparse.ArgumentParser(prog="python -m das_lib.models.finetune", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=None, help="folder to write the adapter to (default: a new "
                        f"folder under {CACHE_DIR / 'finetune'}; {ADAPTER_DIR} only when named here)")
    parser.add_argument("settings", nargs="*", help="FinetuneConfig settings, e.g. steps=500 lr=0.001")
    args = parser.parse_args(argv)
    cfg = config_from_args(args.settings, FinetuneConfig)  # a bad setting stops before any training
    out = args.out or default_out()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; give a folder")
    result = build(cfg, out)
    print(json.dumps({k: result[k] for k in ("train_seconds", "train_cpu_seconds", "accuracy")}, indent=1))
    print(f"adapter written to {out}: load it with load_model({str(out)!r})")
    return out


if __name__ == "__main__":
    main()
