"""Alpaca 7B's width in bfloat16: the fast path is exact at d = 4096, and LLaMA's tokenizer drives the task.

A random 2-layer Llama of Alpaca 7B's layer shape (hidden 4096, 32 heads, MLP 11008; a 512-token
vocabulary, since the vocabulary is not what is tested here), bf16 weights, a few short examples:
CPU-sized, yet every matrix has the width of the real model.
"""
import random
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import das_lib
from das_lib.models import shape7b
from das_lib.method.fastpath import CachedForward
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.metrics import accuracy
from das_lib.method.sites import Site
from das_lib.method.data import InterchangeData
from das_lib.method.training import PlainForward, evaluate

VOCAB, T, N = 512, 4, 4  # a layer pass at d = 4096 costs ~3 s per 16 tokens on a busy core


@pytest.fixture(scope="module")
def model():
    lm = shape7b.random_model(shape7b.alpaca_7b_config(2, vocab_size=VOCAB), torch.bfloat16, seed=0)
    # The default init gives an almost flat answer distribution, where bf16 rounding would decide the
    # argmax; a sharper head (as in benchmarks/bench_boundless.py) makes "same argmax" a real test.
    lm.lm_head.weight.mul_(30)
    return lm


def low_rank(seed: int, boundary: float) -> BoundlessDASIntervention:
    torch.manual_seed(seed)
    intervention = BoundlessDASIntervention(4096, r=64, init_boundary=boundary)
    intervention.temperature = 0.1  # a nearly hard mask: boundary x 64 rotated dims swapped
    return intervention


def test_fast_path_is_exact_at_width_4096_in_bfloat16(model):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ids = lambda: torch.randint(3, VOCAB, (N, T), generator=g)  # noqa: E731
    positions = torch.tensor([T - 1, T - 2, T - 1, T - 3])  # the prefix P = 1 is read from the cache
    data = InterchangeData({"input_ids": ids()}, {"input_ids": ids()}, positions, positions.clone(),
                           torch.zeros(N, dtype=torch.long), torch.zeros(N, dtype=torch.long))
    teacher = low_rank(1, boundary=0.5)
    with torch.no_grad():  # teacher labels: the model's own answer under a fixed intervention (plain path)
        data.labels = PlainForward(model, Site(0, "x"), teacher)(data).argmax(-1)
    student = low_rank(2, boundary=0.25)
    # chapter 7: the intervention keeps float32 parameters; its weight is cast to the model's dtype per step
    assert all(p.dtype == torch.float32 for p in student.parameters())
    site = Site(0, "x")
    fast, plain = CachedForward(model, site, student, [data]), PlainForward(model, site, student)
    assert fast.checked and fast.plans[0].strategy == "full"
    logits = {}
    grads = {}
    for name, forward in (("fast", fast), ("plain", plain)):
        student.zero_grad()
        out = forward(data)
        assert out.dtype == torch.bfloat16
        F.cross_entropy(out.float(), data.labels).backward()
        logits[name] = out.detach().float()
        grads[name] = [p.grad.clone() for p in student.parameters()]
    scale = logits["plain"].abs().max().item()
    assert scale > 1.0  # the sharpened head gives O(1) logits, so the tolerance below is not vacuous
    assert (logits["fast"] - logits["plain"]).abs().max().item() <= 2e-2 * scale  # bf16: 8 bits of mantissa
    assert torch.equal(logits["fast"].argmax(-1), logits["plain"].argmax(-1))
    for gf, gp in zip(grads["fast"], grads["plain"]):
        assert gf.dtype == torch.float32 and torch.isfinite(gf).all()
        assert (gf - gp).norm() <= 0.05 * gp.norm() + 1e-6
    assert any(g.abs().max() > 0 for g in grads["plain"])
    # the same IIA on the teacher-labelled set: the student's from the logits above (the plain path's
    # costs a full pass, so it is not run again), and the teacher's, which the plain path scores 1 by construction
    assert evaluate(fast, data) == accuracy(logits["plain"], data.labels)
    fast.intervention = teacher
    assert evaluate(fast, data) == 1.0


def test_llama_tokenizer_drives_the_alpaca_task():
    from das_lib.tasks.pricetag.game import sample_game
    from das_lib.models.load import default_template
    from das_lib.tasks.pricetag.task import PriceTagTask

    if shape7b.llama_tokenizer_file() is None:
        pytest.skip(shape7b.HOW_TO_GET)
    tokenizer = shape7b.llama_tokenizer()
    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.eos_token
    assert default_template(tokenizer) == "alpaca"
    task = PriceTagTask(tokenizer, "alpaca")
    assert tokenizer.convert_ids_to_tokens(list(task.answer_ids())) in (["▁Yes", "▁No"], ["Yes", "No"])
    assert sorted(task.answer_ids()) == [2501, 5613]  # 'Yes' = 5613, 'No' = 2501, as measured in issue 12
    rng = random.Random(0)
    games = [sample_game(rng) for _ in range(300)]
    encoded = task.encode(games)
    # 79 tokens, BOS included (LLaMA's tokenizer adds it), and one length for all 300 games
    assert encoded["input_ids"].shape[1] == 79 and bool(encoded["attention_mask"].all())
    assert bool((encoded["input_ids"][:, 0] == tokenizer.bos_token_id).all())
    assert len(task.searched_roles()) == 11
    roles = task.roles(games[0])
    assert roles["last"] == 78 and roles["resp_colon"] == 77 and roles["amount_int"] == 68


def test_alpaca_prompt_counts_name_what_the_last_13_tokens_would_add(monkeypatch, tmp_path):
    from das_lib import paper

    if shape7b.llama_tokenizer_file() is not None:
        counts = shape7b.alpaca_prompt_counts(paper.POSITIONS, n_games=50)
        # 79 tokens, 11 from the amount on: the paper's last 13 would also take ':' of "### Input:" and '\n'
        assert counts == {"tokens": 79, "searched": 11, "before": [":", "\n"]}
    monkeypatch.setenv(shape7b.TOKENIZER_ENV, str(tmp_path))  # a folder without tokenizer.json
    assert shape7b.alpaca_prompt_counts(paper.POSITIONS) is None


def test_the_tokenizer_and_the_7b_shaped_model_go_under_the_repository_root():
    # the layout move once left these paths one folder too deep, inside the package (das_lib/.cache)
    root = Path(das_lib.__file__).resolve().parents[1]
    assert shape7b.REPO_ROOT == root and (root / "pyproject.toml").exists()
    assert shape7b.TOKENIZER_DIR == root / ".cache" / "llama-tokenizer"
