"""The fine-tuned SmolLM2 (das_lib.models.finetune): a peft adapter that merges into a plain Llama and plays the game."""
import math
import random

import pytest
import torch
from transformers import LlamaForCausalLM

from das_lib.models import finetune
from das_lib.models.load import SMOLLM2_PRICETAG_DIR, adapter_base, load_config, load_model, model_source
from das_lib.models.game_training import config_from_args
from das_lib.tasks.pricetag import game as pricetag
from das_lib.tasks.pricetag.task import PriceTagTask, task_accuracy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def merged() -> tuple[torch.nn.Module, object]:
    return load_model("smollm2-pricetag")


def test_the_adapter_is_a_small_standard_peft_adapter_of_smollm2():
    files = {p.name: p.stat().st_size for p in SMOLLM2_PRICETAG_DIR.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", finetune.TRAINING_RECORD} <= set(files)
    assert sum(files.values()) <= 20 * 2**20
    assert adapter_base("smollm2-pricetag") == "smollm2"
    assert load_config("smollm2-pricetag").num_hidden_layers == load_config("smollm2").num_hidden_layers == 30


def test_the_adapter_merges_into_a_plain_frozen_llama(merged):
    model, tokenizer = merged
    assert type(model) is LlamaForCausalLM
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    base, _ = load_model("smollm2")
    q_merged, q_base = model.model.layers[10].self_attn.q_proj.weight, base.model.layers[10].self_attn.q_proj.weight
    assert q_merged.shape == q_base.shape and not torch.equal(q_merged, q_base)  # the update is in the weights
    torch.testing.assert_close(model.model.embed_tokens.weight, base.model.embed_tokens.weight)  # embeddings frozen


def within_sampling_error(accuracy: float, n: int, target: float = finetune.TARGET) -> bool:
    """Not significantly below `target`: at most two standard errors of an n-game estimate under it."""
    return accuracy >= target - 2 * math.sqrt(target * (1 - target) / n)


def test_the_fine_tuned_model_meets_its_target_on_fresh_games(merged):
    model, tokenizer = merged
    rng = random.Random(2024)  # neither the training stream (seed + 1) nor the record's evaluation games
    games = [pricetag.sample_game(rng) for _ in range(200)]
    accuracy = task_accuracy(model, PriceTagTask(tokenizer, "chat", "yesno"), games)
    assert within_sampling_error(accuracy, len(games)), f"yes/no accuracy {accuracy:.3f} on 200 fresh games"
    record = finetune.load_record()  # the shipped adapter's own measurement: the target itself, on 1000 games
    assert record["n_eval"] >= 1000 and record["accuracy"]["yesno"] >= finetune.TARGET


def test_fine_tuning_is_deterministic_for_a_thread_count():
    cfg = finetune.FinetuneConfig(steps=2, batch_size=4, warmup_steps=1, threads=1)
    logs = [finetune.train(cfg, log_every=0)[2]["log"] for _ in range(2)]
    assert logs[0] == logs[1] and len(logs[0]) == 2


def test_a_bad_setting_is_refused_with_the_keys_that_exist():
    with pytest.raises(ValueError, match="use key=value with a key among"):
        config_from_args(["stepz=3"], finetune.FinetuneConfig)
    assert config_from_args(["steps=3", "lr=0.01"], finetune.FinetuneConfig).steps == 3


def test_a_missing_shipped_adapter_is_named_with_the_command_that_retrains_it(tmp_path, monkeypatch):
    from das_lib.models import load

    monkeypatch.setitem(load.SHIPPED_ADAPTERS, "gemma3-pricetag", (tmp_path / "gone", "base=gemma3-270m steps=640"))
    with pytest.raises(FileNotFoundError, match=r"'gemma3-pricetag' is missing .* --out .*gone base=gemma3-270m steps=640"):
        model_source("gemma3-pricetag")
    with pytest.raises(FileNotFoundError, match=r"retrain it with .* base=gemma3-270m steps=640"):
        finetune.load_record(tmp_path / "gone")


def test_a_folder_that_is_neither_model_nor_adapter_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face model directory"):
        model_source(str(tmp_path))


def test_the_record_summary_gives_the_chapter_its_numbers():
    numbers, table = finetune.record_summary(finetune.load_record())
    assert numbers["task_acc"] == finetune.load_record()["accuracy"]["yesno"]
    assert numbers["train_minutes"] == pytest.approx(numbers["train_seconds"] / 60)
    assert table.index[0] == finetune.SETTING_NAMES["yesno"] and not table["accuracy"].isna().any()
