"""The readout: which answer a model gives, read over the task's answer tokens only.

The paper reads an answer as the argmax over the whole vocabulary at the answer position. A model that
puts almost all its mass on the task's answer words (a fine-tuned one) gives the same answer either way,
but a network that never says them (a randomly initialised one, or a pretrained one off its format)
then "answers" some third token on every input: its IIA and its IIA of doing nothing are both about 0,
and a null built on such a network cannot fail. So every model here is read over the task's answer
tokens: the answer is the most likely of them (`InterchangeData.answers`, e.g. the ids of "Yes" and
"No"), training's cross-entropy is taken over them, and a random network answers about at its
majority rate. Data with `answers=None` keep the paper's whole-vocabulary reading, which the chapters
report beside it where the two differ.

A forward (`training.InterventionForward`) returns logits over `batch.answers` when the batch names
them, (B, A), else over the vocabulary, (B, V); the functions below turn either into token ids and
training targets.
"""
from __future__ import annotations

import torch


def over_answers(logits: torch.Tensor, answers: torch.Tensor | None) -> torch.Tensor:
    """Logits (B, V) restricted to the answer tokens, (B, A); unchanged when `answers` is None."""
    return logits if answers is None else logits.index_select(-1, answers.to(logits.device))


def predicted_tokens(logits: torch.Tensor, answers: torch.Tensor | None) -> torch.Tensor:
    """(B,) the token id answered: the most likely answer token for (B, A) logits over `answers`, else the
    argmax over the vocabulary."""
    best = logits.argmax(-1)
    return best if answers is None else answers.to(best.device)[best]


def answer_targets(labels: torch.Tensor, answers: torch.Tensor | None) -> torch.Tensor:
    """(B,) the class index of each label token for a cross-entropy over `answers` (its position among them),
    else the label token itself (a class of the vocabulary)."""
    if answers is None:
        return labels
    hits = labels[:, None] == answers.to(labels.device)[None, :]  # (B, A): exactly one hit per label, checked on creation
    return hits.int().argmax(-1)


def check_answers(answers: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse an answer set that is not a 1-D list of distinct token ids holding every label."""
    if answers.dim() != 1 or answers.numel() < 2:
        raise ValueError(f"answers must be a 1-D tensor of at least two token ids, got shape {tuple(answers.shape)}")
    if answers.unique().numel() != answers.numel():
        raise ValueError(f"answers must be distinct token ids, got {answers.tolist()}")
    if labels.numel() and labels.device.type == "cpu" and answers.device.type == "cpu":
        missing = sorted(set(labels.unique().tolist()) - set(answers.tolist()))
        if missing:
            raise ValueError(f"labels {missing} are not among the answer tokens {answers.tolist()}: "
                             "every counterfactual label must be one of the task's answers")
