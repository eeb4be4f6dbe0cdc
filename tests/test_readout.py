"""The readout (das_lib.method.readout): answers read over the task's answer tokens, on every path, and a
random network then answers near its majority rate where the whole-vocabulary reading makes it answer nothing."""
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.readout import answer_targets, over_answers, predicted_tokens
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, answer_tokens, correct_pairs, train_intervention
from das_lib.models.load import load_config, load_model
from das_lib.tasks.pricetag.game import sample_games, sample_pairs
from das_lib.tasks.pricetag.task import PriceTagTask, task_accuracy

V, D, T, N = 40, 32, 10, 24
ANSWERS = torch.tensor([7, 3])


def data(n: int = N, seed: int = 1, position: int = T - 1) -> InterchangeData:
    g = torch.Generator().manual_seed(seed)
    base, source = torch.randint(0, V, (n, T), generator=g), torch.randint(0, V, (n, T), generator=g)
    labels = ANSWERS[torch.randint(0, 2, (n,), generator=g)]
    positions = torch.full((n,), position)
    return InterchangeData({"input_ids": base}, {"input_ids": source}, positions, positions.clone(),
                           torch.zeros(n, dtype=torch.long), labels, answers=ANSWERS)


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def test_the_functions_map_between_answer_classes_and_tokens():
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 0.0, 9.0]])
    answers = torch.tensor([2, 0])
    assert over_answers(logits, answers).tolist() == [[1.0, 0.0], [0.0, 3.0]]
    assert predicted_tokens(over_answers(logits, answers), answers).tolist() == [2, 0]  # not the vocabulary's 1 and 3
    assert predicted_tokens(logits, None).tolist() == [1, 3]
    assert answer_targets(torch.tensor([0, 2, 2]), answers).tolist() == [1, 0, 0]


def test_labels_outside_the_answer_tokens_are_refused():
    with pytest.raises(ValueError, match="not among the answer tokens"):
        InterchangeData({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, {"input_ids": torch.zeros(2, 3, dtype=torch.long)},
                        torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                        torch.tensor([7, 5]), answers=ANSWERS)
    with pytest.raises(ValueError, match="distinct"):
        data().read_over(torch.tensor([7, 7]))


@pytest.mark.parametrize("position", [T - 1, T - 4])
def test_fast_and_plain_paths_read_the_same_answer_logits(llama, position):
    d = data(position=position)
    intervention = BoundlessDASIntervention(D)
    intervention.temperature = 2.0
    site = Site(1, "x")
    fast, plain = CachedForward(llama, site, intervention, [d]), PlainForward(llama, site, intervention)
    full = PlainForward(llama, site, intervention)(d.read_over(None))  # (N, V): the whole vocabulary
    assert fast(d).shape == (N, 2)
    assert torch.allclose(fast(d), full[:, ANSWERS], atol=1e-5, rtol=0)  # the answer rows of the same head
    assert torch.allclose(plain(d), full[:, ANSWERS], atol=1e-6, rtol=0)
    assert torch.equal(correct_pairs(fast, d), correct_pairs(plain, d))


def test_training_takes_the_cross_entropy_over_the_answer_tokens(llama):
    d = data(n=64)
    config = TrainConfig(steps=3, batch_size=64)
    runs = {}
    for name, over in (("answers", ANSWERS), ("vocabulary", None)):
        torch.manual_seed(0)
        intervention = BoundlessDASIntervention(D)
        runs[name] = train_intervention(PlainForward(llama, Site(1, "x"), intervention), intervention, d.read_over(over), config,
                                        progress=False).curves[0]["task_loss"]
    logits = PlainForward(llama, Site(1, "x"), BoundlessDASIntervention(D))(d.read_over(None))
    assert runs["answers"] < 1.0 < runs["vocabulary"]  # two classes against forty: the losses differ in kind
    assert F.cross_entropy(logits[:, ANSWERS], answer_targets(d.labels, ANSWERS)).item() < 1.0


def test_a_random_network_answers_near_its_majority_rate_over_the_answer_tokens_and_never_over_the_vocabulary():
    # the control that the whole-vocabulary reading cannot give: with it a random network never says Yes or No,
    # so its accuracy, its IIA and its IIA of doing nothing are all 0 and any "gap" is the finding's own gain
    torch.manual_seed(0)
    config = load_config("standin")
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    _, tokenizer = load_model("standin")
    task = PriceTagTask(tokenizer, "standin")
    games = sample_games(200, seed=3)
    over_answers_acc = task_accuracy(model, task, games)
    over_vocabulary_acc = task_accuracy(model, task, games, vocabulary=True)
    yes_rate = sum(g["lb"] <= g["amount"] <= g["ub"] for g in games) / len(games)
    assert over_vocabulary_acc < 0.05
    assert min(yes_rate, 1 - yes_rate) - 0.1 <= over_answers_acc <= max(yes_rate, 1 - yes_rate) + 0.1
    pairs = task.interchange_data(sample_pairs("left", 64, seed=0), "last")
    assert set(answer_tokens(model, pairs).tolist()) <= set(task.answer_ids())  # it always answers Yes or No
