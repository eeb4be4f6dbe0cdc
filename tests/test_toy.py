"""The toy (a + b) * c: causal models, the network, neuron search and DAS (chapter 1's facts)."""
import pytest
import torch

from das_lib.method import neurons
from das_lib.method.sites import Site, answer_logits, find_layers
from das_lib.method.training import TrainConfig, evaluate, PlainForward, unintervened_iia
from das_lib.models import toy
from das_lib.tasks.toy import task as toy_task

BASE, SOURCE = {"a": 2, "b": 3, "c": 4}, {"a": 1, "b": 2, "c": 3}
DAS_CONFIG = TrainConfig(steps=150, lr=1e-2, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split():
    return toy_task.split_triples(10, 0.2, seed=0)


@pytest.fixture(scope="module")
def net(split):
    return toy.train_toy_model(split[0], 10, seed=0)


@pytest.fixture(scope="module")
def pairs(split):
    train, test = split
    S, P = toy_task.sum_model(), toy_task.distributive_model()
    return {
        "S": (toy_task.sample_toy_pairs(S, train, "S", 1000, 1), toy_task.sample_toy_pairs(S, test, "S", 300, 2)),
        "P": (toy_task.sample_toy_pairs(P, train, "P", 1000, 1), toy_task.sample_toy_pairs(P, test, "P", 300, 2)),
    }


def test_interchange_on_the_causal_model_gives_12():
    S = toy_task.sum_model()
    assert S.predict(BASE) == 20 and S.predict(SOURCE) == 9
    assert S.interchange(BASE, SOURCE, ["S"]) == 12
    assert S.predict(BASE, {"S": 3}) == 12
    assert toy_task.distributive_model().interchange(BASE, SOURCE, ["P"]) == 1 * 3 + 3 * 4


def test_both_hypotheses_compute_the_task_but_their_interchanges_differ():
    S, P = toy_task.sum_model(), toy_task.distributive_model()
    triples = toy_task.all_triples(6)
    assert all(S.predict(t) == P.predict(t) == (t["a"] + t["b"]) * t["c"] for t in triples)
    differ = sum(S.interchange(b, s, ["S"]) != P.interchange(b, s, ["P"]) for b in triples[:40] for s in triples[::5])
    assert differ > 0.5 * 40 * len(triples[::5])


def test_pair_labels_follow_the_definition(pairs):
    for p in pairs["S"][1]:
        assert p.label == (p.source["a"] + p.source["b"]) * p.base["c"]
    for p in pairs["P"][1]:
        assert p.label == p.source["a"] * p.source["c"] + p.base["b"] * p.base["c"]
    data = toy_task.interchange_data(pairs["S"][1])
    assert data.labels.tolist() == [p.label for p in pairs["S"][1]]
    assert data.base["x"][0].tolist() == [pairs["S"][1][0].base[k] for k in "abc"]
    assert data.source["x"][0].tolist() == [pairs["S"][1][0].source[k] for k in "abc"]


def test_split_holds_out_a_disjoint_part():
    train, test = toy_task.split_triples(10, 0.2, seed=0)
    assert len(train) == 800 and len(test) == 200
    assert not {tuple(t.values()) for t in train} & {tuple(t.values()) for t in test}
    assert toy_task.split_triples(10, 0.2, seed=0) == (train, test)
    assert toy_task.split_triples(10, 0.2, seed=1) != (train, test)
    with pytest.raises(ValueError, match="test_frac"):
        toy_task.split_triples(10, 1.5, seed=0)


def test_network_plugs_into_the_site_machinery(net):
    assert find_layers(net) is net.layers
    logits = answer_logits(net, {"x": toy_task.encode([BASE])})
    assert logits.shape == (1, toy_task.n_classes(10))


def test_network_solves_held_out_triples(net, split):
    train, test = split
    assert toy.network_accuracy(net, train, toy_task.sum_model()) >= 0.98
    assert toy.network_accuracy(net, test, toy_task.sum_model()) >= 0.95


def test_das_finds_S_and_not_the_wrong_variable(net, pairs):
    (train_S, test_S), (train_P, test_P) = pairs["S"], pairs["P"]
    das_S, res_S = toy.train_das(net, Site(0), 1, toy_task.interchange_data(train_S), toy_task.interchange_data(test_S), DAS_CONFIG)
    _, res_P = toy.train_das(net, Site(0), 1, toy_task.interchange_data(train_P), toy_task.interchange_data(test_P), DAS_CONFIG)
    assert res_S.iia >= 0.9
    assert res_S.iia > res_P.iia + 0.5
    assert toy.intervened_answer(net, Site(0), das_S, BASE, SOURCE) == 12


def test_neuron_search_baseline(net, pairs):
    data = toy_task.interchange_data(pairs["S"][1])
    found = neurons.exhaustive_neuron_search(net, Site(0), net.width, [1], data)
    assert len(found) == net.width and found[0].iia == max(r.iia for r in found)
    assert found[0].iia == evaluate(PlainForward(net, Site(0), neurons.NeuronIntervention(net.width, list(found[0].dims))), data)
    assert found[0].iia < 0.5  # every neuron mixes S with c
    path = neurons.greedy_neuron_search(net, Site(0), net.width, data, max_size=3)
    assert [len(r.dims) for r in path] == [1, 2, 3]
    assert path[0].dims[0] in path[2].dims and path[0].iia == found[0].iia
    with pytest.raises(ValueError, match="max_sets"):
        neurons.exhaustive_neuron_search(net, Site(0), net.width, [3], data)
    with pytest.raises(ValueError, match="sizes"):
        neurons.exhaustive_neuron_search(net, Site(0), net.width, [0], data)


def test_same_seed_same_numbers(split, pairs):
    train, _ = split
    a, b = (toy.train_toy_model(train, 10, width=16, steps=30, seed=3) for _ in range(2))
    c = toy.train_toy_model(train, 10, width=16, steps=30, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    data = toy_task.interchange_data(pairs["S"][0][:200])
    short = TrainConfig(steps=10, lr=1e-2, seed=5)
    (ia, ra), (ib, rb) = (toy.train_das(a, Site(0), 2, data, data, short) for _ in range(2))
    assert ra.iia == rb.iia and [r["loss"] for r in ra.curves] == [r["loss"] for r in rb.curves]
    assert torch.equal(ia.rotation.weight, ib.rotation.weight)


def test_comparisons_are_paired_differences_of_the_reported_iias(net, pairs):
    (train_S, test_S), (train_P, test_P) = pairs["S"], pairs["P"]
    data_S, data_P = toy_task.interchange_data(test_S), toy_task.interchange_data(test_P)
    das_S = [toy.train_das(net, Site(0), 1, toy_task.interchange_data(train_S), data_S, DAS_CONFIG)]
    das_P = [toy.train_das(net, Site(0), 1, toy_task.interchange_data(train_P), data_P, DAS_CONFIG)]
    search = {0: neurons.exhaustive_neuron_search(net, Site(0), net.width, [1], data_S)}
    path = neurons.greedy_neuron_search(net, Site(0), net.width, data_S, max_size=2)
    right = toy.right_by_pair(net, data_S, Site(0), das_S[0][0])
    nothing = toy.right_by_pair(net, data_S)
    assert right.shape == (len(test_S),) and set(right) <= {0, 1}
    assert right.mean() == pytest.approx(das_S[0][1].iia) and nothing.mean() == pytest.approx(unintervened_iia(net, data_S))
    compared = toy.comparisons(net, Site(0), das_S, das_P, search, path, data_S, data_P)
    assert list(compared) == list(toy.COMPARISONS)
    assert all(low <= diff <= high for diff, low, high in compared.values())
    assert compared["das"][0] == pytest.approx(das_S[0][1].iia - nothing.mean())
    assert compared["wrong"][0] == pytest.approx(das_P[0][1].iia - toy.right_by_pair(net, data_P).mean())
    assert compared["neurons"][0] == pytest.approx(search[0][0].iia - nothing.mean())
    assert compared["das"][1] > 0  # DAS on S is clearly above leaving the network alone
    assert compared["greedy"][2] < 0  # and two neurons stay clearly below it
