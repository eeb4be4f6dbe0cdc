"""The core: interventions through the hooks, orthogonality, save/load, labels, hooks, refusals."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method.causal import CausalModel, Variable
from das_lib.method.counterfactual import sample_causal_pairs
from das_lib.models import toy
from das_lib.tasks.toy import task as toy_task
from das_lib.method.interventions import (
    FILE_FORMAT, BoundlessDASIntervention, DASIntervention, NeuronIntervention, load_intervention, save_intervention,
)
from das_lib.method.data import InterchangeData
from das_lib.method.metrics import accuracy, correct, normalised_iia
from das_lib.method.sites import Site, answer_logits, capture, edit_output, find_layers, intervened_logits
from das_lib.method.training import PlainForward, TrainConfig, train_intervention

V, D, T = 50, 32, 6


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def mlp() -> toy.ToyMLP:
    torch.manual_seed(0)
    return toy.ToyMLP(n_digits=10, width=16, n_layers=2).eval().requires_grad_(False)


def make_interventions(d: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(1)
    boundless = BoundlessDASIntervention(d, init_boundary=0.5)
    boundless.temperature = 1.0
    return {"neuron": NeuronIntervention(d, [0, 3, 5]), "das": DASIntervention(d, 4), "boundless": boundless,
            "das_low_rank": DASIntervention(d, 2, r=8)}


def llama_inputs(seed: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(seed))}


def toy_inputs(seed: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randint(0, 10, (5, 3), generator=torch.Generator().manual_seed(seed))}


def cases(llama, mlp):
    """(model, site, inputs maker, positions, hidden size) for a language model and the toy MLP."""
    return [(llama, Site(0, "tok"), llama_inputs, torch.tensor([5, 2, 3]), D),
            (llama, Site(1, "tok"), llama_inputs, torch.tensor([1, 5, 0]), D),
            (mlp, Site(0), toy_inputs, None, 16), (mlp, Site(1), toy_inputs, None, 16)]


# --- interventions through the hook --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["neuron", "das", "boundless", "das_low_rank"])
def test_base_equal_to_source_changes_nothing(llama, mlp, kind):
    for model, site, inputs, pos, d in cases(llama, mlp):
        base = inputs(0)
        source_vectors = capture(model, site, base, pos)
        out = intervened_logits(model, site, base, pos, source_vectors, make_interventions(d)[kind])
        assert torch.allclose(out, answer_logits(model, base), atol=1e-6), (type(model).__name__, site)


@pytest.mark.parametrize("kind", ["neuron", "das", "boundless", "das_low_rank"])
def test_another_source_changes_the_output(llama, mlp, kind):
    for model, site, inputs, pos, d in cases(llama, mlp):
        base, source = inputs(0), inputs(1)
        out = intervened_logits(model, site, base, pos, capture(model, site, source, pos), make_interventions(d)[kind])
        assert not torch.allclose(out, answer_logits(model, base), atol=1e-4), (type(model).__name__, site)


def test_swapping_every_neuron_at_the_top_gives_the_source_run(llama, mlp):
    last = torch.full((3,), T - 1)
    base, source = llama_inputs(0), llama_inputs(1)
    site = Site(len(find_layers(llama)) - 1, "last")
    out = intervened_logits(llama, site, base, last, capture(llama, site, source, last), NeuronIntervention(D, list(range(D))))
    assert torch.allclose(out, answer_logits(llama, source), atol=1e-5)
    base, source = toy_inputs(0), toy_inputs(1)
    out = intervened_logits(mlp, Site(0), base, None, capture(mlp, Site(0), source, None), NeuronIntervention(16, list(range(16))))
    assert torch.allclose(out, answer_logits(mlp, source), atol=1e-6)


# --- orthogonality, save and load ----------------------------------------------------------------

def toy_data(mlp, n: int = 64) -> InterchangeData:
    model = toy_task.sum_model()
    pairs = sample_causal_pairs(model, lambda rng: {k: rng.randrange(10) for k in "abc"}, ["S"], n, seed=0)
    return toy_task.interchange_data(pairs)


@pytest.mark.parametrize("make", [lambda: DASIntervention(16, 3), lambda: DASIntervention(16, 2, r=6),
                                  lambda: BoundlessDASIntervention(16)], ids=["das", "low_rank", "boundless"])
def test_rotation_stays_orthogonal_while_training(mlp, make):
    torch.manual_seed(0)
    intervention = make()
    plain = PlainForward(mlp, Site(0), intervention)
    errors = []

    def forward(batch):  # called once per step, with the weights of that step
        errors.append(intervention.rotation.orthogonality_error())
        return plain(batch)

    train_intervention(forward, intervention, toy_data(mlp), TrainConfig(steps=30, batch_size=16, lr=0.1), progress=False)
    assert len(errors) == 30 and max(errors) <= 1e-5
    assert intervention.rotation.orthogonality_error() <= 1e-5


@pytest.mark.parametrize("make", [lambda: DASIntervention(16, 3), lambda: DASIntervention(16, 2, r=6),
                                  lambda: BoundlessDASIntervention(16, n_variables=2),
                                  lambda: NeuronIntervention(16, [2, 9])], ids=["das", "low_rank", "boundless", "neuron"])
def test_saved_intervention_loads_identical(mlp, tmp_path, make):
    torch.manual_seed(0)
    intervention = make()
    if any(p.requires_grad for p in intervention.parameters()):
        train_intervention(PlainForward(mlp, Site(0), intervention), intervention, toy_data(mlp),
                           TrainConfig(steps=5, batch_size=16, lr=0.05), progress=False)
        intervention.temperature = 0.7  # Boundless DAS: the temperature must travel with the weights
    save_intervention(intervention, tmp_path / "alignment", meta={"site": "L0"})
    loaded, meta = load_intervention(tmp_path / "alignment", hidden_size=16)
    assert meta == {"site": "L0"} and type(loaded) is type(intervention)
    assert loaded.config() == intervention.config()
    if hasattr(loaded, "rotation"):
        assert loaded.rotation.orthogonality_error() <= 1e-5
        assert torch.equal(loaded.rotation.weight, intervention.rotation.weight)
    base, source = torch.randn(8, 16), torch.randn(8, 16)
    variable = torch.randint(0, getattr(intervention, "n_variables", 1), (8,))
    with torch.no_grad():
        assert torch.equal(loaded(base, source, variable), intervention(base, source, variable))
    with pytest.raises(ValueError, match="hidden size 16 but the model has hidden size 32"):
        load_intervention(tmp_path / "alignment", hidden_size=32)


def test_loading_a_missing_alignment_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved intervention"):
        load_intervention(tmp_path / "nothing")


def test_saved_files_carry_their_format_and_another_format_is_refused(tmp_path):
    path = save_intervention(DASIntervention(8, 2), tmp_path / "a")
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format"] == FILE_FORMAT
    load_intervention(path)  # this format loads
    info["format"] = FILE_FORMAT + 1
    path.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"file format {FILE_FORMAT + 1}, this das_lib reads format {FILE_FORMAT}"):
        load_intervention(path)


def test_intervention_refuses_vectors_of_another_size():
    with pytest.raises(ValueError, match="built for hidden size 16"):
        DASIntervention(16, 2)(torch.zeros(2, 32), torch.zeros(2, 32))


# --- counterfactual labels -------------------------------------------------------------------------

def two_step_model() -> CausalModel:
    return CausalModel("two_step", ["x", "y", "z"], [
        Variable("u", ("x", "y"), lambda x, y: x - y),
        Variable("w", ("u", "z"), lambda u, z: u * z),
        Variable("out", ("w", "x"), lambda w, x: w > x),
    ], output="out")


@pytest.mark.parametrize("variables", [["u"], ["w"], ["u", "w"], ["z"]])
def test_counterfactual_labels_are_the_intervened_causal_model(variables):
    model = two_step_model()
    pairs = sample_causal_pairs(model, lambda rng: {k: rng.randint(-5, 5) for k in "xyz"}, variables, 200, seed=0)
    for p in pairs:
        source_values = model.run(p.source)
        assert p.label == model.run(p.base, {v: source_values[v] for v in variables})["out"]
        assert p.base_label == model.predict(p.base) and p.source_label == model.predict(p.source)
    assert any(p.label != p.base_label for p in pairs)  # the interventions do change outputs


def test_run_with_interventions_recomputes_only_downstream():
    model = two_step_model()
    values = model.run({"x": 4, "y": 1, "z": 2}, {"u": 10})
    assert values == {"x": 4, "y": 1, "z": 2, "u": 10, "w": 20, "out": True}
    assert model.run({"x": 4, "y": 1, "z": 2}, {"w": 0})["out"] is False
    assert model.run({"x": 4, "y": 1, "z": 2}, {"z": -1})["w"] == -3  # inputs can be intervened on too


# --- hooks -------------------------------------------------------------------------------------------

def all_hooks_removed(model) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_hooks_are_removed_after_an_exception(llama, mlp):
    module = find_layers(mlp)[0]

    def broken(hidden):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with edit_output(module, broken):
            mlp(**toy_inputs(0))
    assert not module._forward_hooks
    pos = torch.full((3,), T - 1)
    wrong_size = DASIntervention(D + 1, 2)
    with pytest.raises(ValueError, match="built for hidden size"):  # raised inside the hook, mid-forward
        intervened_logits(llama, Site(0, "last"), llama_inputs(0), pos, torch.zeros(3, D + 1), wrong_size)
    with pytest.raises(IndexError):  # the model itself fails: token ids outside the vocabulary
        capture(llama, Site(1, "last"), {"input_ids": torch.full((3, T), V + 5)}, pos)
    capture(llama, Site(1, "last"), llama_inputs(0), pos)  # stops the forward with its own exception
    assert all_hooks_removed(llama) and all_hooks_removed(mlp)


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variables, output, words", [
    ([Variable("s", ("a", "q"), lambda a, q: a + q)], "s", "reads \\['q'\\] before they are defined"),
    ([Variable("a", ("b",), lambda b: b)], "a", "defined twice"),
    ([Variable("s", ("a", "b"), lambda a, b: a + b)], "o", "output 'o' is not one of"),
])
def test_causal_model_refuses_bad_definitions(variables, output, words):
    with pytest.raises(ValueError, match=words):
        CausalModel("bad", ["a", "b"], variables, output)


def test_causal_model_refuses_unknown_interventions_and_missing_inputs():
    model = toy_task.sum_model()
    with pytest.raises(KeyError, match="cannot intervene on \\['T'\\]"):
        model.run({"a": 1, "b": 2, "c": 3}, {"T": 5})
    with pytest.raises(KeyError, match="cannot intervene on"):
        model.interchange({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}, ["T"])
    with pytest.raises(KeyError, match="missing \\['c'\\]"):
        model.predict({"a": 1, "b": 2})


@pytest.mark.parametrize("bad, words", [
    ({"steps": 0}, "steps must be >= 1"), ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": -1e-3}, "learning rates must be positive"), ({"boundary_lr": 0.0}, "learning rates must be positive"),
    ({"warmup_frac": 1.0}, "warmup_frac"), ({"temperature_start": 0.05}, "temperature"),
    ({"temperature_end": 0.0}, "temperature"),
])
def test_train_config_refuses_bad_values(bad, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**bad)


def test_correct_is_per_row_and_accuracy_its_mean():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert correct(logits, torch.tensor([1, 1, 1])).tolist() == [True, False, True]
    assert accuracy(logits, torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 labels"):
        correct(logits, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="zero examples"):
        accuracy(logits[:0], torch.tensor([], dtype=torch.long))


def test_normalised_iia():
    assert normalised_iia(0.9, task_acc=0.95, dummy_acc=0.5) == pytest.approx(0.4 / 0.45)
    assert normalised_iia(0.5, task_acc=0.95, dummy_acc=0.5) == 0.0
    for task_acc in (0.5, 0.4):
        with pytest.raises(ValueError, match="not above the dummy rate"):
            normalised_iia(0.6, task_acc=task_acc, dummy_acc=0.5)


# matrix_exp (full) drifts after a large step of its skew parameter; householder (low rank) stays
# orthonormal by construction, and must stay so, near itself
@pytest.mark.parametrize("r, step", [(None, 3.0), (24, 0.05)], ids=["full", "low_rank"])
def test_a_drifted_rotation_is_made_orthonormal_again_close_to_itself(r, step):
    torch.manual_seed(0)
    rotation = BoundlessDASIntervention(256, r=r).rotation
    with torch.no_grad():  # what training moves: not the diagonal (householder keeps its signs there)
        for p in rotation.parameters():
            p.add_((torch.randn_like(p) * step).tril(-1))
    before, drifted = rotation.orthogonality_error(), rotation.weight.detach().clone()
    rotation.reorthonormalize()
    after = rotation.orthogonality_error()
    assert after <= 1e-6 and (after < before or r is not None)
    # the nearest orthonormal matrix: W moves by about its drift, not to another rotation
    assert (rotation.weight - drifted).abs().max().item() <= 10 * before + 1e-6
