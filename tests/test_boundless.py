"""Boundless DAS as in the paper: schedules, disjoint variables, low rank, save/load, divergence, resume."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import make_forward
from das_lib.method.interventions import (
    ORTHOGONAL_MAPS, BoundlessDASIntervention, DASIntervention, load_intervention, save_intervention,
)
from das_lib.method.sites import Site
from das_lib.method.training import (
    PlainForward, TrainConfig, evaluate, lr_factor, make_optimizer, start_temperature, temperature_at, train_intervention,
)

V, D, T = 12, 16, 8


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def teacher_data(model, n: int, seed: int) -> InterchangeData:
    """Pairs labelled by running the model under a fixed DAS intervention (a learnable target)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.full((n,), T - 1)
    data = InterchangeData({"input_ids": torch.randint(0, V, (n, T), generator=g)},
                           {"input_ids": torch.randint(0, V, (n, T), generator=g)},
                           pos, pos, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    torch.manual_seed(100)
    with torch.no_grad():
        data.labels = PlainForward(model, Site(0, "last"), DASIntervention(D, 4))(data).argmax(-1)
    return data


@pytest.fixture(scope="module")
def splits(model):
    return teacher_data(model, 64, seed=1), teacher_data(model, 48, seed=2)


def test_temperature_anneals_linearly_from_50_to_0_1():
    config = TrainConfig(steps=11)
    temps = [temperature_at(s, config, 4096) for s in range(config.steps)]  # the paper's width: the paper's 50
    assert temps[0] == 50.0 and temps[-1] == pytest.approx(0.1)
    assert all(b - a == pytest.approx(-4.99) for a, b in zip(temps, temps[1:]))


def test_default_start_temperature_scales_with_the_width_and_an_explicit_one_wins():
    config = TrainConfig(steps=11)
    assert start_temperature(config, 2048) == 25.0 and start_temperature(config, 64) == 1.0  # at least 1
    assert temperature_at(0, config, 64) == 1.0 and temperature_at(10, config, 64) == pytest.approx(0.1)
    assert start_temperature(TrainConfig(temperature_start=50.0), 64) == 50.0


def test_warm_up_then_decay_and_separate_learning_rates():
    config = TrainConfig(steps=100, warmup_frac=0.1, lr=1e-3, boundary_lr=1e-2)
    factors = [lr_factor(s, config) for s in range(config.steps)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert max(factors) == 1.0 and factors[-1] < 0.02
    groups = make_optimizer(BoundlessDASIntervention(D), config).param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert groups[1]["params"][0].shape == (1,)  # the boundary has its own rate


def test_training_records_the_annealed_temperature(model, splits):
    train, _ = splits
    result = train_intervention(PlainForward(model, Site(0, "last"), iv := BoundlessDASIntervention(D)), iv, train,
                                TrainConfig(steps=5, batch_size=16, temperature_start=50.0), progress=False)
    assert [row["temperature"] for row in result.curves] == pytest.approx([50.0, 37.525, 25.05, 12.575, 0.1])
    assert iv.temperature == pytest.approx(0.1)


@pytest.mark.parametrize("temperature", [50.0, 1.0, 0.1])
def test_two_variables_live_in_disjoint_subspaces(temperature):
    torch.manual_seed(0)
    iv = BoundlessDASIntervention(D, n_variables=2, init_boundary=1.0)
    iv.temperature = temperature
    masks = iv.mask(torch.tensor([0, 1]))
    assert (masks[0] * masks[1]).abs().max() == 0
    base, source = torch.randn(2, D), torch.randn(2, D)
    with torch.no_grad():
        moved = (iv(base, source, torch.tensor([0, 1])) - base) @ iv.rotation.weight.T  # change, in rotated coords
    half = D // 2
    assert moved[0, half:].abs().max() < 1e-6 and moved[0, :half].abs().max() > 1e-3  # variable 0: first block only
    assert moved[1, :half].abs().max() < 1e-6 and moved[1, half:].abs().max() > 1e-3  # variable 1: second block only


def test_low_rank_memory_grows_with_d_times_r():
    d, r = 256, 8
    low = BoundlessDASIntervention(d, r=r)
    full = BoundlessDASIntervention(d)
    numbers = lambda m: sum(t.numel() for t in m.state_dict().values())  # noqa: E731
    assert sum(p.numel() for p in low.rotation.parameters()) == d * r
    assert numbers(low) == d * r + 2  # the rotation, one boundary and the temperature: nothing of size d*d
    assert numbers(full) >= d * d
    assert low.rotation.orthogonality_error() < 1e-5
    with pytest.raises(ValueError, match="rank"):
        BoundlessDASIntervention(d, r=d + 1)


@pytest.mark.parametrize("make", [lambda: BoundlessDASIntervention(D), lambda: BoundlessDASIntervention(D, r=6),
                                  lambda: DASIntervention(D, 4)])
def test_saved_alignment_reloads_orthogonal_with_the_same_iia(model, splits, tmp_path, make):
    train, test = splits
    torch.manual_seed(4)
    iv = make()
    forward = make_forward(model, Site(0, "last"), iv, [train, test])
    result = train_intervention(forward, iv, train, TrainConfig(steps=12, batch_size=16, lr=1e-2), test, progress=False)
    save_intervention(iv, tmp_path / "align", meta={"site": Site(0, "last").as_dict()})
    loaded, meta = load_intervention(tmp_path / "align", hidden_size=D)
    assert meta["site"]["layer"] == 0
    assert loaded.rotation.orthogonality_error() < 1e-5
    assert evaluate(make_forward(model, Site(0, "last"), loaded, [test]), test) == result.iia
    with pytest.raises(ValueError, match=f"hidden size {D}.*hidden size {2 * D}"):
        load_intervention(tmp_path / "align", hidden_size=2 * D)


class Failing:
    """A forward that breaks at one call: NaN logits, huge logits, or an interruption."""

    def __init__(self, forward, at: int, how: str):
        self.forward, self.at, self.how, self.calls = forward, at, how, 0

    def __call__(self, batch):
        self.calls += 1
        logits = self.forward(batch)
        if self.calls - 1 == self.at:
            if self.how == "nan":
                return logits * float("nan")
            if self.how == "explode":
                return logits * 1e7
            raise KeyboardInterrupt
        return logits


@pytest.mark.parametrize("how,words", [("nan", "NaN"), ("explode", "exploded")])
def test_divergence_stops_with_the_step_and_a_cause(model, splits, how, words):
    train, _ = splits
    iv = BoundlessDASIntervention(D)
    forward = Failing(PlainForward(model, Site(0, "last"), iv), at=3, how=how)
    with pytest.raises(FloatingPointError, match=rf"step 3: .*{words}.*Likely cause"):
        train_intervention(forward, iv, train, TrainConfig(steps=8, batch_size=16), progress=False)


def test_resumed_run_equals_uninterrupted_run(model, splits, tmp_path):
    train, test = splits
    config = TrainConfig(steps=10, batch_size=24, eval_every=5)  # 24 does not divide 64: reshuffles mid-run

    def run(forward_wrap=lambda f: f, checkpoint=None):
        torch.manual_seed(7)
        iv = BoundlessDASIntervention(D)
        forward = forward_wrap(make_forward(model, Site(0, "last"), iv, [train, test]))
        return iv, train_intervention(forward, iv, train, config, test, progress=False, checkpoint=checkpoint,
                                      checkpoint_every=3)

    iv_a, plain = run()
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(lambda f: Failing(f, at=7, how="interrupt"), ckpt)  # dies in step 7; last checkpoint after step 5
    iv_b, resumed = run(checkpoint=ckpt)
    assert resumed.resumed_from == 6
    assert [r["loss"] for r in resumed.curves] == [r["loss"] for r in plain.curves]
    assert resumed.iia == plain.iia
    for a, b in zip(iv_a.state_dict().values(), iv_b.state_dict().values()):
        assert torch.equal(a, b)
    _, again = run(checkpoint=ckpt)  # a finished checkpoint: nothing to train, same numbers
    assert again.resumed_from == config.steps and again.iia == plain.iia
    with pytest.raises(ValueError, match="belongs to another run.*config"):
        torch.manual_seed(7)
        iv = BoundlessDASIntervention(D)
        train_intervention(PlainForward(model, Site(0, "last"), iv), iv, train, TrainConfig(steps=11, batch_size=24),
                           progress=False, checkpoint=ckpt)


@pytest.mark.parametrize("orthogonal_map", list(ORTHOGONAL_MAPS))
@pytest.mark.parametrize("rank", [None, 6])
def test_every_map_trains_an_orthogonal_rotation_that_reloads_exactly(model, splits, tmp_path, orthogonal_map, rank):
    train, test = splits
    torch.manual_seed(4)
    iv = BoundlessDASIntervention(D, rank, orthogonal_map=orthogonal_map)
    start = iv.rotation.weight.detach().clone()
    forward = make_forward(model, Site(0, "last"), iv, [train, test])
    config = TrainConfig(steps=12, batch_size=16, lr=1e-2, orthogonal_map=orthogonal_map)
    result = train_intervention(forward, iv, train, config, test, progress=False)
    assert not torch.allclose(iv.rotation.weight, start) and iv.rotation.orthogonality_error() < 1e-5
    save_intervention(iv, tmp_path / "align")
    loaded, _ = load_intervention(tmp_path / "align", hidden_size=D)
    assert loaded.config()["orthogonal_map"] == orthogonal_map
    assert torch.equal(loaded.rotation.weight, iv.rotation.weight)
    assert evaluate(make_forward(model, Site(0, "last"), loaded, [test]), test) == result.iia


def test_every_map_starts_from_the_same_rotation_for_a_seed():
    weights = []
    for m in ORTHOGONAL_MAPS:
        torch.manual_seed(7)
        weights.append(BoundlessDASIntervention(D, orthogonal_map=m).rotation.weight.detach())
    assert all(torch.allclose(w, weights[0], atol=1e-5) for w in weights[1:])


def test_a_config_and_an_intervention_of_two_maps_are_refused(model, splits):
    train, _ = splits
    iv = BoundlessDASIntervention(D, orthogonal_map="qr")
    with pytest.raises(ValueError, match="orthogonal_map=config.orthogonal_map"):
        train_intervention(PlainForward(model, Site(0, "last"), iv), iv, train, TrainConfig(steps=1, orthogonal_map="cayley"))
    with pytest.raises(ValueError, match="unknown orthogonal map"):
        BoundlessDASIntervention(D, orthogonal_map="givens")


def test_an_evaluation_computes_the_rotation_once_not_once_per_batch(model, splits, monkeypatch):
    _, test = splits
    iv = BoundlessDASIntervention(D, orthogonal_map="cayley")
    forward = make_forward(model, Site(0, "last"), iv, [test])
    calls = []
    parametrization = iv.rotation.basis.parametrizations.weight[0]
    original = type(parametrization).forward
    monkeypatch.setattr(type(parametrization), "forward", lambda self, x: calls.append(1) or original(self, x))
    evaluate(forward, test, batch_size=8)  # 48 pairs: 6 batches
    assert len(calls) == 1


def test_the_default_map_is_cayley_for_a_full_rotation_and_householder_for_low_rank():
    full, low = BoundlessDASIntervention(D), BoundlessDASIntervention(D, r=4)
    assert (full.rotation.orthogonal_map, low.rotation.orthogonal_map) == ("cayley", "exp")
    assert sum(t.numel() for t in low.state_dict().values()) == D * 4 + 2  # no D x D matrix kept for low rank
