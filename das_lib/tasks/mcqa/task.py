"""The MCQA task (das_lib.tasks.mcqa.game) as a language-model task, for any Hugging Face fast tokenizer:
prompts, token roles, answer tokens, interchange tensors and the model's accuracy (das_lib.method.task.Task).

Prompts (`template`):
- "chat" (default): the question is the user's message in the tokenizer's chat template, and the answer is
  the first token of the assistant's reply;
- "plain": the question and a newline, for a model without a chat template (the stand-in).
For SmolLM2's chat template the prompt reads (its system message first):
    <|im_start|>user
    The banana is yellow. What color is the banana?
    C. red
    A. yellow
    D. green
    B. blue
    Answer:<|im_end|>
    <|im_start|>assistant
and the answer is the letter alone ("A"): every letter of the task must be one token that starts right after
the prompt, and the letters distinct tokens (`answer_ids` checks both).

Roles. Each is the token holding the role's first character (das_lib.method.prompts.place_roles): "object"
and "colour" (the context's), "question" (the question's last token, its '?'), "opt{i}_letter" and
"opt{i}_colour" for each option i, "answer_marker" ('Answer'), "last" (the prompt's last token), and
"correct_letter", "correct_colour" (those of the option holding the answer, MIB's "correct symbol": they
move with the pointer). A grid searches the question, every option's letter and colour, and the last token
(`searched_roles`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib.method import prompts
from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.data import InterchangeData
from das_lib.method.task import labelled_pairs
from das_lib.method.prompts import Layout, answer_readings, answer_token, left_pad, pad_id, place_roles, require_fast
from das_lib.method.programs import Hypothesis
from das_lib.tasks.mcqa.game import CONTROLS, DEFAULT_FAMILIES, HYPOTHESES, Items, answer, pointer_of, render

TEMPLATES = ("chat", "plain")


def option_roles(n_options: int) -> list[str]:
    """The roles of the options, in prompt order: opt0_letter, opt0_colour, opt1_letter, ..."""
    return [f"opt{i}_{part}" for i in range(n_options) for part in ("letter", "colour")]


@dataclass
class MCQATask:
    """Multiple-choice colour questions for one tokenizer, prompt template, number of options, letters, pair
    families and vocabulary split (das_lib.tasks.mcqa.game.Items)."""

    tokenizer: PreTrainedTokenizerBase
    template: str = "chat"
    n_options: int = 4
    letters: str = "ABCD"
    families: Sequence[str] = DEFAULT_FAMILIES
    split: str = "all"  # "all" | "train" | "held_out" (game.vocabulary)
    _answer_ids: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; choose one of {list(TEMPLATES)}")
        if isinstance(self.families, str):
            raise ValueError(f"families must be a list of family names, e.g. [{self.families!r}], not a string")
        self.families = tuple(self.families)
        self.items = Items(self.n_options, self.letters, self.families, self.split)
        require_fast(self.tokenizer)
        if self.template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template; this one has none (use 'plain')")

    # -- the task as the method needs it (das_lib.method.task.Task) ---------------------------------------

    def settings(self) -> dict[str, Any]:
        """What fixes the prompts and pairs (plain data): template, n_options, letters, families, split."""
        return {"template": self.template, "n_options": self.n_options, "letters": self.letters,
                "families": list(self.families), "split": self.split}

    def hypotheses(self) -> dict[str, Hypothesis]:
        """The answer pointer and the answer letter (game.HYPOTHESES), by key."""
        return dict(HYPOTHESES)

    def controls(self) -> dict[str, Hypothesis]:
        """The control task (game.CONTROLS), by key."""
        return dict(CONTROLS)

    def family(self, settings: Mapping[str, Any]) -> tuple[Hypothesis, ...]:
        """No generated family: empty (whatever `settings`).

        The answer is one chain, stated colour -> pointer -> letter, and its two variables are the hypotheses.
        The other sub-expressions a program for it has (each option's colour, each option's test against the
        stated colour) are no causal models of the task: interchanged alone they leave an item with no option,
        or two, holding the colour, and so with no answer. A family of programs (chapter 9's search) would be
        the two hypotheses again.
        """
        return ()

    def sample_pair(self, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
        """A (base, source) pair from the task's counterfactual families (game.Items.sample_pair)."""
        return self.items.sample_pair(rng)

    def sample_pairs(self, hypothesis: str, n: int, seed: int) -> list[CounterfactualPair]:
        """`n` pairs of the task's families labelled by `hypothesis` (das_lib.method.task.labelled_pairs)."""
        return labelled_pairs(self, hypothesis, n, seed)

    def pairs_table(self, pairs: Sequence[CounterfactualPair]) -> pd.DataFrame:
        """One row per pair: base and source items (object, stated colour, options), variable, answers."""
        def text(item: Mapping[str, Any]) -> str:
            options = " ".join(f"{letter}. {option}" for letter, option in zip(item["letters"], item["options"]))
            return f"{item['object']} is {item['colour']}; {options}"
        return pd.DataFrame([{"base": text(p.base), "source": text(p.source), "variable": ", ".join(p.variables),
                              "base answer": p.base_label,
                              "source answer": p.source_label, "counterfactual": p.label} for p in pairs])

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        """An item of the task's distribution."""
        return self.items.sample_item(rng)

    def readings(self, model: nn.Module, inputs: Sequence[Mapping[str, Any]], batch_size: int = 64
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) bool each: is the model's answer to each item right, read over the letters and over the vocabulary."""
        expected = torch.tensor([self.answer_id(answer(x)) for x in inputs], dtype=torch.long, device="cpu")
        return answer_readings(model, self.encode, inputs, expected, self.answer_tensor(), batch_size)

    # -- text and tokens -------------------------------------------------------------------------------

    def prompt(self, item: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
        """The full prompt of `item` (the answer is the first token after it) and where each role starts in it."""
        body, starts = render(item)
        if self.template == "plain":
            return body + "\n", starts
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                  add_generation_prompt=True)
        at = text.find(body)
        if at < 0:
            raise ValueError(f"the chat template does not show the question as written: {body!r} is not in {text!r}")
        return text, {name: at + char for name, char in starts.items()}

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        # A plain prompt gets the tokenizer's BOS; a chat template writes its own special tokens.
        return self.tokenizer(list(texts), add_special_tokens=self.template == "plain", return_offsets_mapping=True)

    def layouts(self, items: Sequence[Mapping[str, Any]]) -> list[Layout]:
        """Tokenize the prompts of `items` and place every role on a token."""
        texts = [self.prompt(x) for x in items]
        enc = self._tokenize([t for t, _ in texts])
        out = []
        rows = zip(items, texts, enc["input_ids"], enc["offset_mapping"])
        for n, (item, (prompt, starts), ids, offsets) in enumerate(rows):
            try:
                roles = place_roles(starts, [tuple(o) for o in offsets], prompt)
            except ValueError as err:
                raise ValueError(f"prompt {n} (item {dict(item)}): {err}") from None
            at = pointer_of(item["colour"], item["options"])
            roles |= {"correct_letter": roles[f"opt{at}_letter"], "correct_colour": roles[f"opt{at}_colour"],
                      "last": len(ids) - 1}
            out.append(Layout(prompt, list(ids), roles))
        return out

    def roles(self, item: Mapping[str, Any]) -> dict[str, int]:
        """Token index of each role in the (unpadded) prompt of `item`."""
        return self.layouts([item])[0].roles

    def searched_roles(self) -> list[str]:
        """The roles a grid searches, in prompt order: the question's last token, each option's letter and
        colour, the last token."""
        return ["question", *option_roles(self.n_options), "last"]

    def encode(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Model inputs of the prompts of `items`, left-padded so that every answer is read at the last position."""
        return left_pad([l.ids for l in self.layouts(items)], pad_id(self.tokenizer))[0]

    # -- answers ---------------------------------------------------------------------------------------

    def answer_ids(self) -> tuple[int, ...]:
        """The token of each letter of `letters` as the model would emit it right after the prompt."""
        if self._answer_ids is None:
            prompt = self.prompt(self.items.sample_item(random.Random(0)))[0]
            ids = tuple(answer_token(self.tokenizer, prompt, x, self.template == "plain") for x in self.letters)
            if len(set(ids)) != len(ids):
                shared = {x: self.tokenizer.convert_ids_to_tokens(t) for x, t in zip(self.letters, ids)
                          if ids.count(t) > 1}
                raise ValueError(f"letters share their first token ({shared}): one answer position cannot tell them "
                                 "apart")
            self._answer_ids = ids
        return self._answer_ids

    def answer_tensor(self) -> torch.Tensor:
        """(len(letters),) the letters' tokens: what every answer is read over (das_lib.method.readout)."""
        return torch.tensor(self.answer_ids(), dtype=torch.long, device="cpu")

    def answer_id(self, letter: str) -> int:
        """The token id of an answer letter."""
        if not isinstance(letter, str) or letter not in self.letters or len(letter) != 1:
            raise ValueError(f"an MCQA answer is one of the letters {self.letters!r}, got {letter!r}")
        return self.answer_ids()[self.letters.index(letter)]

    # -- tensors ---------------------------------------------------------------------------------------

    def interchange_data(self, pairs: Sequence[CounterfactualPair], role: str | Sequence[str]) -> InterchangeData:
        """Interchange examples at token role `role` (the same role in base and source, each at its own token),
        or at several roles as (N, k) positions; base and source prompts padded to one length."""
        layouts = self.layouts([p.base for p in pairs] + [p.source for p in pairs])
        return prompts.interchange_data(layouts, pairs, role, pad_id(self.tokenizer), self.answer_id,
                                        self.answer_tensor())
