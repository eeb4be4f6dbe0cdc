"""Where an intervention happens: a layer's output at one token position, and the hooks that reach it.

A `Site` is plain data so sweeps, stores and figures can name, hash and sort it. The hooks are
context managers that always remove themselves, whatever exception happens inside.

Positions are per example: a (B,) tensor of token indices, or (B, k) to intervene on k positions
together (their vectors are concatenated, so the intervention acts on k*d dimensions).
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel


# Every site is the output of a decoder block. Records still name that component, so that the hashes of
# the sweep records written before Site lost its (never read) `component` field stay the same.
COMPONENT = "block_output"


@dataclass(frozen=True, order=True)
class Site:
    """The output of decoder layer `layer` at the token playing role `position` (None: no token axis)."""

    layer: int
    position: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON records (with the component, always a block's output: see COMPONENT)."""
        return {**asdict(self), "component": COMPONENT}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Site":
        """The site of a record's plain-data form."""
        return cls(data["layer"], data.get("position"))

    def __str__(self) -> str:
        return f"L{self.layer}" + (f"@{self.position}" if self.position is not None else "")


_LAYER_PATHS = (
    "model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "model.language_model.layers", "layers", "h",
)


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Llama/Mistral/Qwen, GPT-2, GPT-NeoX or das_lib toy model."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise TypeError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(_LAYER_PATHS)}"
    )


def layer_module(model: nn.Module, site: Site) -> nn.Module:
    """The module whose output is the site, refusing layers that do not exist."""
    layers = find_layers(model)
    if not 0 <= site.layer < len(layers):
        raise IndexError(f"site layer {site.layer} does not exist: {type(model).__name__} has layers 0..{len(layers) - 1}")
    return layers[site.layer]


def main_output(output: Any) -> torch.Tensor:
    """A module's main output: the first item of a tuple output (a decoder layer's hidden states)."""
    return output[0] if isinstance(output, tuple) else output


def _replace_main(output: Any, new: torch.Tensor) -> Any:
    return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


@contextmanager
def edit_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace `module`'s (main) output by `fn(output)` while the context is open."""

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        return _replace_main(output, fn(main_output(output)))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class Captured(Exception):
    """Raised inside a hook to stop the forward pass once the site's output is known."""


def _check_positions(hidden: torch.Tensor, positions: torch.Tensor, check: bool = True) -> torch.Tensor:
    """`positions` as a (B,) or (B, k) long tensor on hidden's device, refusing tokens that do not exist.
    With `check=False` the range is not checked (it reads the positions back from the device): for a
    caller that checked them once already (the fast path, when it caches a dataset)."""
    length = hidden.shape[1]
    if positions.dim() not in (1, 2) or positions.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"positions must have shape (batch,) or (batch, k) with batch {hidden.shape[0]}, got {tuple(positions.shape)}"
        )
    if check and positions.numel() and (positions.min() < 0 or positions.max() >= length):
        raise IndexError(
            f"token position {int(positions.min())}..{int(positions.max())} does not exist: "
            f"these inputs have positions 0..{length - 1}"
        )
    return positions.to(hidden.device, torch.long)


def select_positions(hidden: torch.Tensor, positions: torch.Tensor | None, check: bool = True) -> torch.Tensor:
    """hidden[b, positions[b]] for a (B, T, d) tensor: (B, d), or (B, k*d) for k positions per row
    (the k vectors concatenated: several positions intervened together); `hidden` itself when None."""
    if positions is None:
        return hidden
    pos = _check_positions(hidden, positions, check)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pos.dim() == 1:
        return hidden[rows, pos]
    return hidden[rows[:, None], pos].reshape(hidden.shape[0], -1)


def write_positions(hidden: torch.Tensor, positions: torch.Tensor, new: torch.Tensor, check: bool = True) -> torch.Tensor:
    """A copy of `hidden` (B, T, d) with the vectors that `select_positions` reads replaced by `new`."""
    pos = _check_positions(hidden, positions, check)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    out = hidden.clone()
    if pos.dim() == 1:
        out[rows, pos] = new.to(hidden.dtype)
    else:
        out[rows[:, None], pos] = new.reshape(*pos.shape, hidden.shape[-1]).to(hidden.dtype)
    return out


def capture(model: nn.Module, site: Site, inputs: dict[str, torch.Tensor], positions: torch.Tensor | None,
            check: bool = True) -> torch.Tensor:
    """The site's vectors (B, d) on `inputs`; layers above the site are not run."""
    return capture_layers(model, [site.layer], inputs, positions, check)[site.layer]


def capture_layers(
    model: nn.Module, layers: Sequence[int], inputs: dict[str, torch.Tensor], positions: torch.Tensor | None,
    check: bool = True,
) -> dict[int, torch.Tensor]:
    """The vectors (B, d) at `positions` of each of `layers`' outputs, from one forward pass that stops
    at the highest of them (`check`: refuse positions out of range; see `select_positions`)."""
    modules = {layer: layer_module(model, Site(layer)) for layer in layers}
    top = max(modules)
    store: dict[int, torch.Tensor] = {}

    def hook(layer: int, output: Any) -> None:
        store[layer] = select_positions(main_output(output), positions, check)
        if layer == top:
            raise Captured

    handles = [m.register_forward_hook(lambda mod, args, out, l=l: hook(l, out)) for l, m in modules.items()]
    try:
        model(**inputs)
    except Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(store) != len(modules):
        raise RuntimeError(f"the forward pass of {type(model).__name__} never reached layers {sorted(set(modules) - set(store))}")
    return store


@functools.cache
def _keeps_logits(model_class: type) -> bool:
    return issubclass(model_class, PreTrainedModel) and "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _answer_only(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that make a Hugging Face language model compute only what the answer needs: the
    output head at the last position (not the whole vocabulary at every one) and no key/value cache."""
    return {"logits_to_keep": 1, "use_cache": False} if _keeps_logits(type(model)) else {}


def answer_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, V) at the answer position: the last token of a language model, or a classifier's output."""
    out = model(**inputs, **_answer_only(model))
    logits = getattr(out, "logits", out)
    return logits[:, -1] if logits.dim() == 3 else logits


def intervened_logits(
    model: nn.Module,
    site: Site,
    base: dict[str, torch.Tensor],
    base_positions: torch.Tensor | None,
    source_vectors: torch.Tensor,
    intervention: Callable[..., torch.Tensor],
    variable: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Answer logits of the base run with the site replaced by `intervention(base_h, source_h, variable)`."""

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if base_positions is None:
            return intervention(hidden, source_vectors, variable)
        new = intervention(select_positions(hidden, base_positions, check), source_vectors, variable)
        return write_positions(hidden, base_positions, new, check)

    with edit_output(layer_module(model, site), edit):
        return answer_logits(model, base)
