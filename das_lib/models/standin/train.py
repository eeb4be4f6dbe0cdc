"""Training the stand-in: the data mix (games, instruction variants, contexts) and the loop.

The model answers like Alpaca: the prompt is rendered with pricetag's "standin" template and the
answer word (Yes/No, or True/False for the sibling instruction) is the first token after it. Only
that answer token is trained (cross-entropy at the last prompt position); nothing else is needed
for the game. The data mix holds instructions and contexts that the robustness chapters do NOT use
verbatim, so those chapters test the alignment on inputs it was not trained on.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from typing import Callable, Sequence

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from das_lib.models.game_training import lr_at, sample_training_game
from das_lib.models.standin.config import StandinConfig, model_config
from das_lib.models.standin.corpus import sample_context
from das_lib.models.standin.planted import PlantedMechanism
from das_lib.models.standin.tokenizer import build_tokenizer
from das_lib.tasks.pricetag import game as pricetag


def sample_example(rng: random.Random, cfg: StandinConfig, with_context: bool) -> tuple[str, str]:
    """(prompt, answer word) for one training example."""
    game = sample_training_game(rng, cfg)
    variant = rng.choices(list(cfg.variant_mix), weights=list(cfg.variant_mix.values()))[0]
    context = sample_context(rng) if with_context else None
    prompt = pricetag.render_prompt(game, "standin", variant, context)
    return prompt, pricetag.answer_word(pricetag.task_label(game), variant)


def sample_batch(rng: random.Random, cfg: StandinConfig, step: int) -> list[list[tuple[str, str]]]:
    """One step's examples, as chunks of similar length (contexts vary a lot: less padding to compute).

    A step holds either plain prompts or prompts with a context, in proportion `context_rate`, once
    `context_after` of the steps are done (the game is learnt first, ignoring contexts after).
    """
    with_context = step >= cfg.context_after * cfg.steps and rng.random() < cfg.context_rate
    examples = [sample_example(rng, cfg, with_context) for _ in range(cfg.batch_size)]
    if not with_context:
        return [examples]
    examples.sort(key=lambda e: len(e[0]))
    size = math.ceil(cfg.batch_size / cfg.context_chunks)
    return [examples[i : i + size] for i in range(0, len(examples), size)]


def encode_batch(tokenizer: PreTrainedTokenizerFast, examples: Sequence[tuple[str, str]]) -> tuple[dict, torch.Tensor]:
    """Left-padded prompts and the token id of each answer."""
    inputs = tokenizer([p for p, _ in examples], return_tensors="pt", padding=True)
    answers = torch.tensor([tokenizer.convert_tokens_to_ids(a) for _, a in examples], device="cpu")
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}, answers


def train(
    cfg: StandinConfig, log_every: int = 100, evaluate: Callable[[LlamaForCausalLM, PreTrainedTokenizerFast], None] | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """Build the tokenizer and train the model from `cfg.seed`; returns (model, tokenizer, record).

    Every `log_every` steps it prints the batch loss and accuracy and calls `evaluate(model, tokenizer)`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # restored below: the caller's setting is the caller's
    try:
        return _train(cfg, log_every, evaluate)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: StandinConfig, log_every: int, evaluate: Callable | None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """The training loop of `train`, run with `cfg.threads` threads."""
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.seed, cfg.vocab_size)
    config = model_config(cfg, tokenizer)
    config._attn_implementation = "eager"  # the same attention; for heads this small, faster than SDPA on a CPU
    model = LlamaForCausalLM(config)
    n_iit = 2 * round(cfg.iit_rate * cfg.batch_size / 2)  # even: pairs are balanced Yes/No
    planted = PlantedMechanism(cfg, tokenizer) if n_iit else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed + 1)
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, correct, iit_correct = 0.0, 0, 0
        for chunk in sample_batch(rng, cfg, step):  # gradient accumulation over chunks of similar length
            inputs, answers = encode_batch(tokenizer, chunk)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1]  # only the answer position is trained
            loss = torch.nn.functional.cross_entropy(logits, answers, reduction="sum") / (cfg.batch_size + n_iit)
            loss.backward()
            loss_sum += loss.item()
            correct += (logits.argmax(-1) == answers).sum().item()
        if planted is not None:
            iit_loss, iit_correct = planted.loss_sum(model, rng, n_iit)
            iit_loss = iit_loss / (cfg.batch_size + n_iit)
            iit_loss.backward()
            loss_sum += iit_loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if log_every and (step + 1) % log_every == 0:
            iit = f"  IIT batch acc {iit_correct / n_iit:.3f}" if n_iit else ""
            print(f"step {step + 1}/{cfg.steps}  loss {loss_sum:.4f}  batch acc {correct / cfg.batch_size:.3f}{iit}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            if evaluate is not None:
                evaluate(model, tokenizer)
                model.train()
    model.eval()
    record = {"config": asdict(cfg), "train_seconds": round(time.perf_counter() - start, 1),
              "train_cpu_seconds": round(time.process_time() - cpu_start, 1)}
    return model, tokenizer, record
