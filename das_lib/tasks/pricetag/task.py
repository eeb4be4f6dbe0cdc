"""The price-tagging game as a language-model task, for any Hugging Face fast tokenizer.

A `PriceTagTask` renders prompts, names the answer tokens, finds token positions *by role* (from the
character spans of the prompt's parts, through the tokenizer's offset mapping, never by fixed index)
and encodes counterfactual pairs into the tensors training needs (`InterchangeData`).

Roles. Every character span with a meaning gets a role: the digits of the bracket ("lb_int",
"lb_point", "lb_tenths", "lb_hundredths", the same for "ub_"), the newline before the amount
("nl_before_amount"), the amount's digits ("amount_int", ...), the word "dollars", the two newlines
after the input ("nl_after_input", "nl_before_response"), the response marker ("resp_hash" for '###',
"response", "resp_colon") and "last", the final token. A role points at the token that holds the
role's first character, so when a tokenizer merges characters (say "49" in one token) several roles
point at the same token. The *searched* positions are the tokens from the amount's first token to the
last one, as in the paper; each gets one name: the first role that points at it, or, for a token no
role covers (a chat template's '<|im_end|>'), a name made from its text and order ("tok_im_end",
"tok_nl_2"), stable across prompts of one tokenizer.
"""
from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.data import InterchangeData
from das_lib.method.prompts import answer_readings, pair_targets, role_positions
from das_lib.tasks.pricetag import programs
from das_lib.tasks.pricetag.tables import pairs_table
from das_lib.tasks.pricetag.game import (
    ANSWERS,
    Controls,
    HYPOTHESES,
    Hypothesis,
    INSTRUCTIONS,
    TEMPLATES,
    answer_word,
    check_bracket,
    price,
    render_input,
    render_instruction,
    render_prompt,
    sample_game,
    sample_pair,
    sample_pairs,
    task_label,
)

if TYPE_CHECKING:
    import pandas as pd

TEMPLATE_NAMES = (*TEMPLATES, "chat")
DIGIT_PARTS = ("int", "point", "tenths", "hundredths")
AMOUNT_ROLES = tuple(f"amount_{p}" for p in DIGIT_PARTS)
BRACKET_ROLES = tuple(f"{b}_{p}" for b in ("lb", "ub") for p in DIGIT_PARTS)
MARKER_ROLES = ("nl_after_input", "nl_before_response", "resp_hash", "response", "resp_colon")
# Order in which roles name a token they share: mostly the earliest part of the prompt first.
ROLE_ORDER = (*BRACKET_ROLES, *AMOUNT_ROLES, "nl_before_amount", "dollars", *MARKER_ROLES)
RESPONSE_SUFFIX = "\n\n### Response:\n"  # what follows the input in every pricetag template
# The game whose prompt fixes the searched positions' names and the answer tokens.
REFERENCE_GAME = {"lb": 549, "ub": 849, "amount": 712}


@dataclass(frozen=True)
class Layout:
    """One tokenized prompt: its token ids and the token index of every role (and searched name)."""

    prompt: str
    ids: list[int]
    roles: dict[str, int]
    searched: list[str]  # one name per token from the amount's first token to the last


def _price_parts(text: str, start: int, prefix: str) -> list[tuple[str, int, int]]:
    """Character spans of the parts of a price like '5.49' that starts at `start`."""
    whole = text.split(".")[0]
    spans = [(f"{prefix}_int", start, start + len(whole)), (f"{prefix}_point", start + len(whole), start + len(whole) + 1)]
    first = start + len(whole) + 1
    return spans + [(f"{prefix}_tenths", first, first + 1), (f"{prefix}_hundredths", first + 1, first + 2)]


def _token_name(text: str) -> str:
    """A role-like name for a token no role covers, from its text."""
    for char, word in (("\n", " nl "), ("#", " hash "), (":", " colon "), (".", " dot "), (",", " comma ")):
        text = text.replace(char, word)
    return "tok_" + (re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower() or "x")


@dataclass
class PriceTagTask:
    """The price-tagging game for one tokenizer, prompt template, instruction variant and context, its games drawn
with a random bracket each or with one fixed `bracket` (lower, upper) in cents."""

    tokenizer: PreTrainedTokenizerBase
    template: str = "alpaca"  # "alpaca" | "standin" (pricetag.TEMPLATES) | "chat" (the tokenizer's chat template)
    variant: str = "yesno"  # pricetag.INSTRUCTIONS key; "truefalse" is the sibling instruction
    context: str | None = None  # irrelevant context prepended to the instruction
    bracket: tuple[int, int] | None = None  # a fixed bracket in cents for every game (None: one drawn per game)
    _answer_ids: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATE_NAMES:
            raise KeyError(f"unknown template {self.template!r}; choose one of {list(TEMPLATE_NAMES)}")
        if self.variant not in INSTRUCTIONS:
            raise KeyError(f"unknown instruction variant {self.variant!r}; choose one of {list(INSTRUCTIONS)}")
        if self.bracket is not None:
            self.bracket = check_bracket(self.bracket)
        if not getattr(self.tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(self.tokenizer).__name__} is not a fast tokenizer: token positions are found from its "
                "offset mapping, which only fast (Rust) tokenizers give; load it with use_fast=True"
            )
        if self.template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template; this one has none (use 'alpaca')")

    # -- the task as the method needs it (das_lib.method.task.Task) ---------------------------------------

    def settings(self) -> dict[str, Any]:
        """What fixes the prompts and games: template, instruction variant, context (and a fixed bracket, if any)."""
        fixed = {} if self.bracket is None else {"bracket": list(self.bracket)}
        return {"template": self.template, "variant": self.variant, "context": self.context, **fixed}

    def hypotheses(self) -> dict[str, Hypothesis]:
        """The paper's four hypotheses, by key."""
        return dict(HYPOTHESES)

    def controls(self) -> Mapping[str, Hypothesis]:
        """The control tasks and the other nulls trained like hypotheses (game.Controls: each looked up on demand)."""
        return Controls()

    def family(self, settings: Mapping[str, Any]) -> tuple[Hypothesis, ...]:
        """The generated space of programs (das_lib.tasks.pricetag.programs), fixed by n_brackets, seed and thresholds."""
        return programs.space(settings["n_brackets"], settings["seed"], tuple(settings["thresholds"])).candidates

    def sample_pair(self, rng: random.Random) -> tuple[dict[str, int], dict[str, int]]:
        """A (base, source) pair of games, the amount's region of each drawn uniformly (game.sample_pair)."""
        return sample_pair(rng, self.bracket)

    def sample_pairs(self, hypothesis: str, n: int, seed: int) -> list[CounterfactualPair]:
        """The paper's pairs: `n` pairs of `hypothesis`, Yes and No labels balanced (game.sample_pairs)."""
        return sample_pairs(hypothesis, n, seed, self.bracket)

    def pairs_table(self, pairs: Sequence[CounterfactualPair]) -> pd.DataFrame:
        """One row per pair: the games (amount in bracket), regions, variable, answers (tables.pairs_table)."""
        return pairs_table(pairs, self.variant)

    def sample_input(self, rng: random.Random) -> dict[str, int]:
        """A game of the factual task's distribution."""
        return sample_game(rng, self.bracket)

    def readings(self, model: nn.Module, inputs: Sequence[Mapping[str, int]], batch_size: int = 64
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) bool each, from one forward pass: is the model's answer to each game right, read over the two answer
        tokens (das_lib.method.readout), and read over the whole vocabulary (the paper's reading)."""
        expected = torch.tensor([self.answer_id(task_label(g)) for g in inputs], dtype=torch.long, device="cpu")
        return answer_readings(model, self.encode, inputs, expected, self.answer_tensor(), batch_size)

    # -- text ---------------------------------------------------------------------------------------

    def prompt(self, game: Mapping[str, int]) -> str:
        """The full prompt of `game`; the answer is the first token after it."""
        if self.template != "chat":
            return render_prompt(game, self.template, self.variant, self.context)
        user = render_instruction(game, self.variant, self.context) + "\n\n" + render_input(game)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def _char_spans(self, game: Mapping[str, int], prompt: str) -> list[tuple[str, int, int]]:
        """(role, start, end) character spans of the prompt's parts, refusing prompts laid out otherwise."""
        instruction, input_text = render_instruction(game, self.variant, self.context), render_input(game)
        i0 = prompt.find(instruction)
        j0 = prompt.rfind(input_text)
        if i0 < 0 or j0 < i0 + len(instruction):
            raise ValueError(
                f"cannot find the instruction followed by the input {input_text!r} in the prompt {prompt!r}; "
                f"template {self.template!r} must show the instruction, then the input"
            )
        lb, ub = price(game["lb"]), price(game["ub"])
        k = instruction.find(f"{lb} and {ub} dollars")
        if k < 0:
            raise ValueError(f"cannot find the bracket '{lb} and {ub}' in the instruction {instruction!r}")
        amount = price(game["amount"])
        spans = _price_parts(lb, i0 + k, "lb") + _price_parts(ub, i0 + k + len(f"{lb} and "), "ub")
        if prompt[j0 - 1] == "\n":  # a role of its own, for a grid that starts before the amount
            spans.append(("nl_before_amount", j0 - 1, j0))
        spans += _price_parts(amount, j0, "amount")
        end = j0 + len(input_text)
        spans.append(("dollars", end - len("dollars"), end))
        if self.template != "chat":
            if prompt[end:] != RESPONSE_SUFFIX:
                raise ValueError(f"the prompt {prompt!r} does not end with the input and then {RESPONSE_SUFFIX!r}")
            marks = (("nl_after_input", 0, 1), ("nl_before_response", 1, 2), ("resp_hash", 2, 5),
                     ("response", 6, 14), ("resp_colon", 14, 15))
            spans += [(name, end + a, end + b) for name, a, b in marks]
        return spans

    # -- tokens ---------------------------------------------------------------------------------------

    def _tokenize(self, prompts: Sequence[str]) -> dict[str, Any]:
        # Alpaca-style prompts get the tokenizer's BOS; a chat template writes its own special tokens.
        return self.tokenizer(list(prompts), add_special_tokens=self.template != "chat", return_offsets_mapping=True)

    def layouts(self, games: Sequence[Mapping[str, int]]) -> list[Layout]:
        """Tokenize the prompts of `games` and place every role on a token."""
        prompts = [self.prompt(g) for g in games]
        enc = self._tokenize(prompts)
        out = []
        for n, (game, prompt, ids, offsets) in enumerate(zip(games, prompts, enc["input_ids"], enc["offset_mapping"])):
            try:
                out.append(self._layout(game, prompt, list(ids), [tuple(o) for o in offsets]))
            except ValueError as err:
                raise ValueError(f"prompt {n} (game {dict(game)}): {err}") from None
        return out

    def _layout(self, game: Mapping[str, int], prompt: str, ids: list[int], offsets: list[tuple[int, int]]) -> Layout:
        real = [(i, s, e) for i, (s, e) in enumerate(offsets) if e > s]  # special tokens like BOS have no span
        starts = [s for _, s, _ in real]
        roles: dict[str, int] = {}
        for name, s, _ in self._char_spans(game, prompt):
            k = bisect.bisect_right(starts, s) - 1
            if k < 0 or not real[k][1] <= s < real[k][2]:
                raise ValueError(f"no token covers character {s} ({prompt[s]!r}) of role {name!r} in {prompt!r}")
            # Byte-fallback tokens of one unknown run share its span: one token per character when counts match.
            first = k
            while first > 0 and real[first - 1][1:] == real[k][1:]:
                first -= 1
            a, b = real[k][1:]
            roles[name] = real[first + (s - a) if k - first + 1 == b - a else first][0]
        roles["last"] = len(ids) - 1
        by_token: dict[int, str] = {}
        for name in ROLE_ORDER:
            if name in roles:
                by_token.setdefault(roles[name], name)
        searched: list[str] = []
        for t in range(roles["amount_int"], len(ids)):
            name = by_token.get(t) or ("last" if t == len(ids) - 1 else None)
            if name is None:  # a token no role covers: name it by its text, numbered if the name is taken
                stem, count = _token_name(prompt[slice(*offsets[t])]), 1
                name = stem
                while name in roles:
                    count += 1
                    name = f"{stem}_{count}"
                roles[name] = t
            searched.append(name)
        return Layout(prompt, ids, roles, searched)

    def roles(self, game: Mapping[str, int]) -> dict[str, int]:
        """Token index of each named role in the (unpadded) prompt of `game`."""
        return self.layouts([game])[0].roles

    def searched_roles(self) -> list[str]:
        """The roles searched by the paper: one per token from the amount's first token to the last.

        (The paper took the last 13 tokens of Alpaca's prompt. LLaMA's tokenizer.json gives 11 from the
        amount on (tests/test_width_7b.py); the newline before the amount has a role, "nl_before_amount",
        for a grid that should start there.)
        """
        return self.layouts([REFERENCE_GAME])[0].searched

    def answer_ids(self) -> tuple[int, int]:
        """(yes_id, no_id): the first token of each answer word as the model would emit it after the prompt."""
        if self._answer_ids is None:
            prompt = self.prompt(REFERENCE_GAME)
            ids = []
            for word in ANSWERS[self.variant]:
                enc = self._tokenize([prompt + word])
                hits = [(t, s) for t, (s, e) in zip(enc["input_ids"][0], enc["offset_mapping"][0]) if s <= len(prompt) < e]
                if not hits or hits[0][1] != len(prompt):
                    raise ValueError(
                        f"the answer {word!r} does not start a new token after the prompt (it merges with the "
                        f"prompt's last characters {prompt[-5:]!r}); this tokenizer cannot read it at the answer position"
                    )
                ids.append(int(hits[0][0]))
            if ids[0] == ids[1]:
                raise ValueError(
                    f"the answers {ANSWERS[self.variant]} share their first token "
                    f"{self.tokenizer.convert_ids_to_tokens(ids[0])!r}: one answer position cannot tell them apart"
                )
            self._answer_ids = (ids[0], ids[1])
        return self._answer_ids

    def answer_tensor(self) -> torch.Tensor:
        """(2,) the answer tokens (yes, no) as a tensor: what every answer is read over (das_lib.method.readout)."""
        return torch.tensor(self.answer_ids(), dtype=torch.long, device="cpu")

    def answer_id(self, label: bool) -> int:
        """The answer token id of a boolean label."""
        if not isinstance(label, bool):
            raise TypeError(f"a price-tag label must be a bool (True = {answer_word(True, self.variant)!r}), got {label!r}")
        yes, no = self.answer_ids()
        return yes if label else no

    # -- tensors ---------------------------------------------------------------------------------------

    def _pad(self, layouts: Sequence[Layout], require_equal_length: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Left-padded input_ids and attention_mask (and position_ids when padded), and each prompt's padding offset."""
        lengths = [len(l.ids) for l in layouts]
        width = max(lengths)
        if require_equal_length and min(lengths) != width:
            n = next(i for i, length in enumerate(lengths) if length != lengths[0])
            raise ValueError(
                f"prompts tokenize to different lengths ({min(lengths)}..{width} tokens), but equal lengths were "
                f"required; e.g. prompt {n} has {lengths[n]} tokens: {layouts[n].prompt!r}"
            )
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        ids = torch.full((len(layouts), width), pad_id, dtype=torch.long, device="cpu")
        mask = torch.zeros((len(layouts), width), dtype=torch.long, device="cpu")
        for row, l in enumerate(layouts):
            ids[row, width - len(l.ids):] = torch.tensor(l.ids, device="cpu")
            mask[row, width - len(l.ids):] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if min(lengths) != width:  # positions must count real tokens only, so that padding changes nothing
            inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        return inputs, [width - n for n in lengths]

    def encode(self, games: Sequence[Mapping[str, int]], require_equal_length: bool = False) -> dict[str, torch.Tensor]:
        """Model inputs of the prompts of `games`, left-padded so the answer is read at the last position.

        When lengths differ, position_ids that count only real tokens are added, so that a padded prompt
        runs exactly as it would alone (models with absolute position embeddings need this).
        """
        return self._pad(self.layouts(games), require_equal_length)[0]

    def interchange_data(
        self,
        pairs: Sequence[CounterfactualPair],
        role: str | Sequence[str],
        require_equal_length: bool = False,
    ) -> InterchangeData:
        """Interchange examples at token role `role` (the same role in base and source) for `pairs`.

        With a list of roles, positions have shape (N, len(roles)). Base and source prompts are padded
        to one common length.
        """
        if not pairs:
            raise ValueError("no pairs given")
        names = [role] if isinstance(role, str) else list(role)
        layouts = self.layouts([p.base for p in pairs] + [p.source for p in pairs])
        inputs, offsets = self._pad(layouts, require_equal_length)
        n = len(pairs)
        pos = role_positions(layouts, offsets, names, f"; searched roles are {self.searched_roles()}")
        if isinstance(role, str):
            pos = pos[:, 0]
        return InterchangeData(base={k: v[:n] for k, v in inputs.items()}, source={k: v[n:] for k, v in inputs.items()},
                               base_pos=pos[:n], source_pos=pos[n:], **self.targets(pairs), roles=tuple(names),
                               answers=self.answer_tensor())

    def targets(self, pairs: Sequence[CounterfactualPair]) -> dict[str, torch.Tensor]:
        """What `pairs` ask of an intervention, as tensors: the variable each intervenes on, the counterfactual
        answer's token id (labels), and the base's own answer's (base_labels)."""
        return pair_targets(pairs, self.answer_id)

    def relabel(self, data: InterchangeData, pairs: Sequence[CounterfactualPair]) -> InterchangeData:
        """`data` (encoded from the same base and source games as `pairs`, in order) with `pairs`' targets."""
        return data.relabelled(**self.targets(pairs))


def position_table(task: PriceTagTask, game: Mapping[str, int]) -> pd.DataFrame:
    """The searched positions of `game`'s prompt: name, token index, token text, and other roles on that token."""
    import pandas as pd

    layout = task.layouts([game])[0]
    rows = []
    for name in layout.searched:
        index = layout.roles[name]
        others = [r for r, i in layout.roles.items() if i == index and r != name and r not in layout.searched]
        rows.append({"role": name, "index": index, "token": repr(task.tokenizer.decode([layout.ids[index]])),
                     "also": ", ".join(others)})
    return pd.DataFrame(rows)


def roles_table(tasks: Mapping[str, PriceTagTask], game: Mapping[str, int]) -> pd.DataFrame:
    """The token index of each searched role (of the first task) of `game`'s prompt, one row per task."""
    import pandas as pd

    searched = next(iter(tasks.values())).searched_roles()
    return pd.DataFrame({name: task.roles(game) for name, task in tasks.items()}).loc[searched].T


def model_answers(model: nn.Module, task: PriceTagTask, games: Sequence[Mapping[str, int]], batch_size: int = 64,
                  vocabulary: bool = False) -> torch.Tensor:
    """(N,) bool: is the model's answer the correct answer token: the more likely of the two answer tokens (the
    readout of das_lib.method.readout), or with `vocabulary` the argmax over the whole vocabulary (the paper's)."""
    return task.readings(model, games, batch_size)[1 if vocabulary else 0]


def task_accuracy(model: nn.Module, task: PriceTagTask, games: Sequence[Mapping[str, int]], batch_size: int = 64,
                  vocabulary: bool = False) -> float:
    """Share of `games` the model answers correctly (`model_answers`: over the answer tokens, or the vocabulary)."""
    if not games:
        raise ValueError("no games given")
    return model_answers(model, task, games, batch_size, vocabulary).float().mean().item()
