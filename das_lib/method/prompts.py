"""Text prompts as model inputs, for any Hugging Face fast tokenizer: token positions found by role, left
padding, the answer tokens, and the model's answers read over them.

What every task with text prompts needs, whatever its prompts say. A role is found from the character where
it starts in the prompt, through the tokenizer's offset mapping (never by a fixed token index): it is the
token that holds that character, so when a tokenizer merges characters several roles may share a token, and
when it splits a word the role lands on the word's first piece. Prompts are padded on the left, so that
every prompt's answer is read at the last position.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.data import InterchangeData
from das_lib.method.readout import over_answers, predicted_tokens
from das_lib.method.sites import answer_logits


@dataclass(frozen=True)
class Layout:
    """One tokenized prompt: its token ids and the token index of every role."""

    prompt: str
    ids: list[int]
    roles: dict[str, int]


def require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer without an offset mapping (only fast, Rust, tokenizers give one)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: token positions are found from its "
            "offset mapping, which only fast (Rust) tokenizers give; load it with use_fast=True"
        )


def place_roles(starts: Mapping[str, int], offsets: Sequence[tuple[int, int]], prompt: str) -> dict[str, int]:
    """The token index of each role, from the character where the role starts in `prompt` (`starts`) and the
    tokens' character spans (`offsets`): the token holding that character."""
    real = [(i, s, e) for i, (s, e) in enumerate(offsets) if e > s]  # special tokens like BOS have no span
    begins = [s for _, s, _ in real]
    roles = {}
    for name, char in starts.items():
        k = bisect.bisect_right(begins, char) - 1
        if k < 0 or not real[k][1] <= char < real[k][2]:
            raise ValueError(f"no token covers character {char} ({prompt[char:char + 1]!r}) of role {name!r} "
                             f"in {prompt!r}")
        # Byte-fallback tokens of one unknown run share its span: one token per character when counts match.
        first = k
        while first > 0 and real[first - 1][1:] == real[k][1:]:
            first -= 1
        a, b = real[k][1:]
        roles[name] = real[first + (char - a) if k - first + 1 == b - a else first][0]
    return roles


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding is written with: the pad token, else the end-of-sequence token, else 0 (padding is masked)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Token id lists as left-padded input_ids and attention_mask (and position_ids counting real tokens only,
    when lengths differ, so that a padded prompt runs as it would alone), and each row's padding."""
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    for row, r in enumerate(rows):
        ids[row, width - len(r):] = torch.tensor(list(r), dtype=torch.long, device="cpu")
        mask[row, width - len(r):] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if min(lengths) != width:
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    return inputs, [width - n for n in lengths]


def answer_token(tokenizer: PreTrainedTokenizerBase, prompt: str, text: str, add_special_tokens: bool) -> int:
    """The token a model emits first when it answers `text` right after `prompt`, refusing an answer whose first
    characters would merge with the end of the prompt into one token (the answer position could not read it)."""
    enc = tokenizer(prompt + text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    at = len(prompt)
    hits = [(t, s, e) for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if s <= at < e]
    if not hits or hits[0][1] != at:
        raise ValueError(f"the answer {text!r} does not start a new token after the prompt (it merges with the "
                         f"prompt's last characters {prompt[-5:]!r}); this tokenizer cannot read it at the answer "
                         "position")
    return int(hits[0][0])


def answer_readings(model: nn.Module, encode: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
                    items: Sequence[Any], expected: torch.Tensor, answers: torch.Tensor,
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) bool each: is the model's answer to each item the `expected` token, read over the `answers` tokens
    (das_lib.method.readout) and over the whole vocabulary, from one forward pass per batch of `encode`d items."""
    if not items:
        raise ValueError("no items given")
    device = next(model.parameters()).device
    ours, vocabulary = [], []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            inputs = {k: v.to(device) for k, v in encode(items[start:start + batch_size]).items()}
            logits = answer_logits(model, inputs)
            ours.append(predicted_tokens(over_answers(logits, answers), answers).cpu())
            vocabulary.append(predicted_tokens(logits, None).cpu())
    return torch.cat(ours) == expected, torch.cat(vocabulary) == expected


def pair_targets(pairs: Sequence[CounterfactualPair], answer_id: Callable[[Any], int]) -> dict[str, torch.Tensor]:
    """What `pairs` ask of an intervention, as tensors: the variable each intervenes on, the counterfactual
    answer's token id (labels) and the base's own answer's (base_labels)."""
    variables = []
    for k, p in enumerate(pairs):
        if "variable_index" not in p.meta and len(p.variables) != 1:
            raise ValueError(f"pair {k} intervenes on {p.variables} but has no meta['variable_index']")
        variables.append(int(p.meta.get("variable_index", 0)))
    return {"variable": torch.tensor(variables, dtype=torch.long, device="cpu"),
            "labels": torch.tensor([answer_id(p.label) for p in pairs], dtype=torch.long, device="cpu"),
            "base_labels": torch.tensor([answer_id(p.base_label) for p in pairs], dtype=torch.long, device="cpu")}


def role_positions(layouts: Sequence[Any], offsets: Sequence[int], names: Sequence[str], hint: str = "") -> torch.Tensor:
    """(2N, len(names)) token positions of each role in the padded prompts of N bases then N sources (`offsets`:
    each prompt's left padding); a role missing from a prompt is named with the prompt and its roles (+ `hint`)."""
    n = len(layouts) // 2
    pos = torch.empty((len(layouts), len(names)), dtype=torch.long, device="cpu")
    for row, l in enumerate(layouts):
        for c, name in enumerate(names):
            if name not in l.roles:
                which = "base" if row < n else "source"
                raise ValueError(f"role {name!r} is not in the {which} prompt of pair {row % n} ({l.prompt!r}); "
                                 f"its roles are {sorted(l.roles)}{hint}")
            pos[row, c] = offsets[row] + l.roles[name]
    return pos


def interchange_data(layouts: Sequence[Layout], pairs: Sequence[CounterfactualPair], role: str | Sequence[str],
                     pad: int, answer_id: Callable[[Any], int], answers: torch.Tensor) -> InterchangeData:
    """Interchange examples of `pairs` from the `layouts` of their bases, then of their sources (in pair order),
    at token role `role` (the same role in base and source, each at its own token), or at several roles as
    (N, k) positions; base and source prompts padded to one length, answers read over `answers`."""
    if not pairs or len(layouts) != 2 * len(pairs):
        raise ValueError(f"{len(pairs)} pairs need the layouts of their bases and sources ({2 * len(pairs)}), "
                         f"got {len(layouts)}")
    names = [role] if isinstance(role, str) else list(role)
    inputs, offsets = left_pad([l.ids for l in layouts], pad)
    n = len(pairs)
    pos = role_positions(layouts, offsets, names)
    if isinstance(role, str):
        pos = pos[:, 0]
    return InterchangeData(base={k: v[:n] for k, v in inputs.items()}, source={k: v[n:] for k, v in inputs.items()},
                           base_pos=pos[:n], source_pos=pos[n:], **pair_targets(pairs, answer_id), roles=tuple(names),
                           answers=answers)
