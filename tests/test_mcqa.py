"""The MCQA task: labels from its causal model for each counterfactual family, roles on the right tokens for
SmolLM2's and the stand-in's tokenizers, single distinct answer tokens, clear errors, the registry, and a tiny
grid on the stand-in end to end (plumbing only: the stand-in knows nothing of MCQA)."""
from __future__ import annotations

import random

import pytest
import torch

from das_lib.method.counterfactual import make_pair
from das_lib.method.prompts import answer_token
from das_lib.method.task import Variant, accuracy
from das_lib.method.training import TrainConfig
from das_lib.models.load import load_model, load_tokenizer
from das_lib.runs import alignments, findings, reuse, robustness_table
from das_lib.runs.grid import Grid, GridSpec
from das_lib.runs.sweep import sweep_spec
from das_lib.tasks import make_task
from das_lib.tasks.mcqa import game
from das_lib.tasks.mcqa.game import CONTROLS, MCQA, Items, answer, vocabulary
from das_lib.tasks.mcqa.task import MCQATask

ITEM = {"object": "banana", "colour": "yellow", "options": ("red", "yellow", "green", "blue"),
        "letters": ("C", "A", "D", "B")}


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def standin():
    return load_tokenizer("standin")


def _tasks(smol, standin, **settings):
    yield "smollm2/chat", MCQATask(smol, "chat", **settings)
    yield "smollm2/plain", MCQATask(smol, "plain", **settings)
    yield "standin/plain", MCQATask(standin, "plain", **settings)


def _labels(base, source):
    """(base answer, pointer-interchange label, letter-interchange label), by running the causal model."""
    return answer(base), MCQA.interchange(base, source, ("pointer",)), MCQA.interchange(base, source, ("letter",))


def _family_pairs(family: str, n: int = 200, **settings):
    items, rng = Items(families=(family,), **settings), random.Random(0)
    out = []
    for _ in range(n):
        base = items.sample_item(rng)
        out.append((base, items.counterfactual(family, base, rng)))
    return out


# --- the causal model and the families ---------------------------------------------------------------------


def test_the_causal_model_answers_the_letter_of_the_stated_colour():
    values = MCQA.run(ITEM)
    assert values["pointer"] == 1 and values["letter"] == "A" == answer(ITEM)
    with pytest.raises(ValueError, match="'pink' is not among the options"):
        answer({**ITEM, "colour": "pink"})


@pytest.mark.parametrize("n_options,letters", [(4, "ABCD"), (3, "ABCD"), (2, "AB"), (5, "ABCDEFGH")])
def test_order_moves_the_pointer_and_keeps_the_letter(n_options, letters):
    for base, source in _family_pairs("order", n_options=n_options, letters=letters):
        assert source["object"] == base["object"] and sorted(source["options"]) == sorted(base["options"])
        assert MCQA.run(source)["pointer"] != MCQA.run(base)["pointer"]
        factual, by_pointer, by_letter = _labels(base, source)
        assert answer(source) == factual == by_letter  # the answer's letter moved with its option
        assert by_pointer != factual and by_pointer == base["letters"][MCQA.run(source)["pointer"]]


@pytest.mark.parametrize("n_options,letters", [(4, "ABCD"), (3, "ABCD"), (2, "AB"), (5, "ABCDEFGH")])
def test_letters_keep_the_pointer_and_change_the_letter(n_options, letters):
    for base, source in _family_pairs("letters", n_options=n_options, letters=letters):
        assert source["options"] == base["options"]
        assert all(a != b for a, b in zip(source["letters"], base["letters"]))  # no option keeps its letter
        factual, by_pointer, by_letter = _labels(base, source)
        assert by_pointer == factual
        assert by_letter == answer(source) != factual


@pytest.mark.parametrize("n_options,letters", [(4, "ABCD"), (3, "ABC"), (3, "ABCD"), (5, "ABCDEFGH")])
def test_both_moves_the_pointer_and_changes_the_letter(n_options, letters):
    for base, source in _family_pairs("both", n_options=n_options, letters=letters):
        assert MCQA.run(source)["pointer"] != MCQA.run(base)["pointer"]
        factual, by_pointer, by_letter = _labels(base, source)
        assert len({factual, by_pointer, by_letter}) == 3  # every pair tells the two hypotheses apart


def test_pairs_draw_from_the_chosen_families():
    def kind(base, source):
        if source["options"] == base["options"]:
            return "letters"
        same_labels = set(zip(source["options"], source["letters"])) == set(zip(base["options"], base["letters"]))
        return "order" if same_labels else "both"

    rng = random.Random(1)
    kinds = [kind(*Items().sample_pair(rng)) for _ in range(600)]
    counts = {k: kinds.count(k) for k in ("order", "letters", "both")}
    assert counts == pytest.approx({"order": 200, "letters": 200, "both": 200}, abs=45)
    rng = random.Random(1)
    assert {kind(*Items(families=("letters",)).sample_pair(rng)) for _ in range(50)} == {"letters"}
    task = MCQATask(load_tokenizer("standin"), "plain", families=["random"])
    base, source = task.sample_pair(random.Random(3))
    assert source != base and set(source) == set(base)


def test_the_control_reads_the_first_letter_through_a_fixed_table():
    control = CONTROLS["control"]
    assert control.variables == ("first_letter",)
    pairs = _family_pairs("letters")
    changed = 0
    for base, source in pairs:
        label = control.model.interchange(base, source, ("first_letter",))
        assert label in base["letters"]
        draw = game._CONTROL_TABLE[(base["object"], source["letters"][0])]
        expected = base["letters"][int(draw * len(base["letters"]))]
        assert label == expected
        changed += label != control.model.predict(base)
    assert 0.3 * len(pairs) < changed < len(pairs)  # its labels move, and not in step with the task's
    assert sum(control.model.predict(b) == answer(b) for b, _ in pairs) < 0.5 * len(pairs)


def test_held_out_vocabulary_never_appears_in_training_items():
    train_objects, train_colours = vocabulary("train")
    held_objects, _ = vocabulary("held_out")
    assert not set(train_objects) & set(held_objects) and not set(train_colours) & set(game.HELD_OUT_COLOURS)
    rng = random.Random(0)
    for _ in range(300):
        item = Items(split="train").sample_item(rng)
        assert item["object"] in train_objects and set(item["options"]) <= set(train_colours)
        assert Items(split="held_out").sample_item(rng)["object"] in held_objects
    assert {Items(split="held_out").sample_item(rng)["colour"] for _ in range(300)} >= set(game.HELD_OUT_COLOURS)


# --- prompts and roles -----------------------------------------------------------------------------------


def _expected_text(item) -> dict[str, str]:
    """The characters each role's token must begin with (after an optional space), from the item."""
    out = {"question": "?", "answer_marker": "A", "object": item["object"][0], "colour": item["colour"][0]}
    for i, (letter, colour) in enumerate(zip(item["letters"], item["options"])):
        out |= {f"opt{i}_letter": letter, f"opt{i}_colour": colour[0]}
    at = item["options"].index(item["colour"])
    return out | {"correct_letter": item["letters"][at], "correct_colour": item["colour"][0]}


def test_every_role_lands_on_the_token_holding_its_first_character(smol, standin):
    items = [Items().sample_item(random.Random(s)) for s in range(20)]
    for label, task in _tasks(smol, standin):
        for layout, item in zip(task.layouts(items), items):
            for role, text in _expected_text(item).items():
                shown = task.tokenizer.decode([layout.ids[layout.roles[role]]])
                assert shown.lstrip(" ").startswith(text), f"{label}: {role} is {shown!r}, expected {text!r} first"
            assert layout.roles["last"] == len(layout.ids) - 1
            searched = [layout.roles[r] for r in task.searched_roles()]
            assert searched == sorted(set(searched)), label  # distinct tokens, in prompt order


def test_roles_of_smollm2_are_whole_words(smol):
    task = MCQATask(smol)
    roles, ids = task.roles(ITEM), task.encode([ITEM])["input_ids"][0]
    shown = {r: smol.decode([int(ids[i])]) for r, i in roles.items()}
    assert shown == {"object": " banana", "colour": " yellow", "question": "?",
                     "opt0_letter": "C", "opt0_colour": " red", "opt1_letter": "A", "opt1_colour": " yellow",
                     "opt2_letter": "D", "opt2_colour": " green", "opt3_letter": "B", "opt3_colour": " blue",
                     "answer_marker": "Answer", "correct_letter": "A", "correct_colour": " yellow", "last": "\n"}
    assert task.searched_roles() == ["question", "opt0_letter", "opt0_colour", "opt1_letter", "opt1_colour",
                                     "opt2_letter", "opt2_colour", "opt3_letter", "opt3_colour", "last"]
    assert task.prompt(ITEM)[0].endswith("B. blue\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


def test_the_standin_splits_words_and_roles_take_the_first_piece(standin):
    task = MCQATask(standin, "plain")
    roles, ids = task.roles(ITEM), task.encode([ITEM])["input_ids"][0]
    assert standin.decode([int(ids[roles["opt2_colour"]])]) == " g"  # ' green' is ' g', 're', 'en'
    assert standin.decode([int(t) for t in ids[roles["opt2_colour"]:roles["opt3_letter"] - 1]]) == " green"


def test_interchange_data_puts_each_prompt_at_its_own_tokens(smol, standin):
    for label, task in _tasks(smol, standin):
        drawn = [task.sample_pair(random.Random(k)) for k in range(12)]
        pairs = [make_pair(MCQA, b, s, ("pointer",)) for b, s in drawn]
        lengths = {len(task.layouts([p.base])[0].ids) for p in pairs}
        assert len(lengths) > 1, label  # objects of several lengths: the prompts are padded
        data = task.interchange_data(pairs, "correct_letter")
        rows = torch.arange(len(pairs))
        letters = [task.tokenizer.decode([int(t)]) for t in data.base["input_ids"][rows, data.base_pos]]
        assert letters == [answer(p.base) for p in pairs], label
        assert data.labels.tolist() == [task.answer_id(p.label) for p in pairs]
        assert data.base_labels.tolist() == [task.answer_id(answer(p.base)) for p in pairs]
        both = task.interchange_data(pairs, task.searched_roles())
        assert both.base_pos.shape == (12, len(task.searched_roles()))
        assert both.source_pos[:, -1].tolist() == [data.base["input_ids"].shape[1] - 1] * 12
        with pytest.raises(ValueError, match="role 'nowhere' is not in the base prompt of pair 0"):
            task.interchange_data(pairs, "nowhere")


# --- answers -------------------------------------------------------------------------------------------


def test_answers_are_single_distinct_letter_tokens(smol, standin):
    for label, task in _tasks(smol, standin, letters="ABCDEFGH", n_options=5):
        ids = task.answer_ids()
        assert len(set(ids)) == 8
        assert [task.tokenizer.decode([t]) for t in ids] == list("ABCDEFGH"), label
        assert task.answer_tensor().tolist() == list(ids)
        prompt = task.prompt(ITEM)[0]
        for letter, t in zip("ABCDEFGH", ids):  # the whole answer is that one token
            assert task.tokenizer(prompt + letter, add_special_tokens=False)["input_ids"][-1] == t


def test_answers_that_cannot_be_read_are_refused(smol, monkeypatch):
    with pytest.raises(ValueError, match="does not start a new token after the prompt"):
        answer_token(smol, "Answer: ", "B", False)  # ' B' is one token: the letter alone never starts one
    from das_lib.tasks.mcqa import task as module

    monkeypatch.setattr(module, "answer_token", lambda *args: 7)
    with pytest.raises(ValueError, match="letters share their first token"):
        MCQATask(smol).answer_ids()


def test_accuracy_reads_over_the_letters(standin):
    task = MCQATask(standin, "plain")
    a = task.answer_id("A")

    class AlwaysA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            logits = torch.zeros(*input_ids.shape, len(standin))
            logits[..., a] = 1.0
            return logits + self.w

    items = [task.sample_input(random.Random(s)) for s in range(40)]
    share = sum(answer(x) == "A" for x in items) / len(items)
    assert 0 < share < 1
    assert accuracy(task, AlwaysA(), items)["answers"] == pytest.approx(share)
    assert accuracy(task, AlwaysA(), items)["vocabulary"] == pytest.approx(share)


# --- settings and the registry ----------------------------------------------------------------------------


def test_bad_settings_are_refused(smol, standin):
    bad = [({"template": "alpaca"}, "unknown template 'alpaca'"),
           ({"n_options": 5}, "n_options must be an int from 2 to 4"), ({"n_options": 1}, "n_options must be"),
           ({"letters": "AB1"}, "distinct capital letters"), ({"letters": "AAB"}, "distinct capital letters"),
           ({"letters": "abcd"}, "distinct capital letters"),
           ({"families": ["sideways"]}, "families must be distinct names"), ({"families": []}, "at least one"),
           ({"families": "order"}, "not a string"),
           ({"letters": "AB", "n_options": 2}, "family 'both' needs at least 3 letters"),
           ({"split": "test"}, "unknown split 'test'"),
           ({"split": "train", "letters": "ABCDEFGHIJ", "n_options": 9}, "8 colours")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            MCQATask(smol, **settings)
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        MCQATask(standin)

    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="not a fast tokenizer"):
        MCQATask(Slow(), "plain")
    with pytest.raises(ValueError, match="one of the letters 'ABCD'"):
        MCQATask(smol).answer_id("E")
    assert MCQATask(standin, "plain", letters="AB", n_options=2, families=["order", "letters"]).answer_ids()


def test_the_registry_builds_the_task_from_its_settings(smol):
    task = make_task("mcqa", smol, {"n_options": 3, "families": ["order", "both"], "split": "held_out"})
    assert isinstance(task, MCQATask) and task.families == ("order", "both")
    assert make_task("mcqa", smol, task.settings()).settings() == task.settings()
    assert set(task.hypotheses()) == {"pointer", "letter"} and set(task.controls()) == {"control"}
    assert task.hypotheses()["pointer"].model is MCQA and task.family({"seed": 0}) == ()


# --- a tiny grid ----------------------------------------------------------------------------------------


def test_a_tiny_grid_runs_on_the_standin(tmp_path):
    torch.set_num_threads(1)
    spec = GridSpec(model="standin", task="mcqa", task_settings={"template": "plain"}, candidates=("pointer",),
                    layers=(1,), positions=("last",),
                    train=TrainConfig(steps=4, batch_size=8), n_train=16, n_val=8, n_test=8, n_task=16)
    grid = Grid(spec, tmp_path, progress=False)
    assert grid.run() == {"ran": 1, "reused": 0}
    runs = grid.runs()
    assert len(runs) == 1 and runs["test"][0].pairs == 8 and 0 <= runs["test"][0].correct.mean() <= 1
    settings = MCQATask(load_tokenizer("standin"), "plain").settings()
    assert grid.config(grid.grid_cells()[0])["task"] == {"name": "mcqa", "settings": settings}
    assert 0 <= grid.task_accuracy() <= 1
    # the robustness study is the task's too: the pointer's alignment reused on objects and colours held out
    held_out = Variant("held_out", "held-out objects and colours", "pointer", "split", (("split", "held_out"),))
    result = reuse.robustness_of(grid, findings.finding(grid), [held_out], n_pairs=8, n_games=8, max_screened=16)
    row = robustness_table.chosen_table(result).loc[("held_out", "pointer")]
    assert row["pairs"] == 8 and 0 <= row["iia"] <= 1 and 0 <= row["task acc"] <= 1
    with pytest.raises(ValueError, match="positions \\['answer_marker'\\]"):
        Grid(GridSpec(model="standin", task="mcqa", task_settings={"template": "plain"}, candidates=("pointer",),
                      layers=(1,), positions=("answer_marker",)), tmp_path, progress=False)


def test_chapter_4s_steps_run_on_any_task():
    """runs.alignments names no task: its pairs, references and example table come from the task's own methods."""
    torch.set_num_threads(1)
    model, tokenizer = load_model("standin")
    task = MCQATask(tokenizer, "plain")
    pairs, reference = alignments.pairs_and_references(model, task, "pointer", 16, 8, 16, seed=0)
    assert [len(pairs[k]) for k in ("train", "scan", "test")] == [16, 8, 8]
    assert 0 <= reference["task_accuracy"] <= 1 and 0 < reference["dummy"] <= 1
    table = task.pairs_table(pairs["test"])
    assert {"base", "source", "variable", "counterfactual"} <= set(table.columns) and len(table) == 8
    assert table["counterfactual"].tolist() == [p.label for p in pairs["test"]]


def test_a_sweep_takes_the_task_by_name():
    spec = sweep_spec("standin", ["pointer"], [1], ["last"], task="mcqa", template="plain", n_options=3, n_train=16)
    assert (spec.task, spec.n_train, spec.task_settings["template"], spec.task_settings["n_options"]) == ("mcqa", 16, "plain", 3)
    with pytest.raises(TypeError, match=r"task 'mcqa' has no setting \['variant'\]"):
        sweep_spec("standin", ["pointer"], [1], ["last"], task="mcqa", template="plain", variant="yesno")
