"""A chapter's parameters, checked in one call: stop early with a message that says what to change.

Every chapter declares what each parameter must be in one schema and calls

    params.check(globals(), {"seed": params.Int(min=0), "device": params.Device(), ...})

which raises a ParameterError naming the first bad parameter, and writes the checked values back
(a device 'auto' becomes the device it resolves to). Relations between parameters are checked
after it with `params.require`.

A chapter's parameters are the names its parameters cell declares with a type (`seed: int = 0`); a
plain value (number, string, list, dict, None) set under any other name, such as a misspelt
`-p step 20` that papermill only warns about, stops the chapter with the closest parameter name.
"""
from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, MutableMapping

import torch

from das_lib.method.sites import Site
from das_lib.models.load import DTYPES, load_config, resolve_device
from das_lib.tasks.pricetag.task import PriceTagTask


class ParameterError(ValueError):
    """A chapter parameter has a value the chapter cannot run with."""


class Rule:
    """What one parameter must be: called with its name and value, returns the checked value."""

    def __call__(self, name: str, value: Any) -> Any:
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _once(name: str, values: list) -> list:
    """`values`, or a ParameterError naming the first item listed twice (a grid would run it twice)."""
    seen = []
    for v in values:
        if v in seen:
            raise ParameterError(f"parameter {name!r} lists {v!r} more than once ({values}); give each value once")
        seen.append(v)
    return values


@dataclass(frozen=True)
class Int(Rule):
    """An integer >= `min` (and <= `max`, if given); with `even`, an even one; `multiple_of`: a multiple of
    it; `why`: the reason for the rule."""

    min: int = 1
    even: bool = False
    multiple_of: int = 1
    why: str = ""
    max: int | None = None

    def __call__(self, name: str, value: Any) -> int:
        if not _is_int(value) or value < self.min or (self.max is not None and value > self.max):
            reason = f" {self.why}" if self.why else ""
            bound = f">= {self.min}" if self.max is None else f"in {self.min}..{self.max}"
            raise ParameterError(f"parameter {name!r} must be an integer {bound}{reason}, got {value!r}")
        if self.even and value % 2:
            raise ParameterError(f"parameter {name!r} must be even (Yes and No labels are balanced), got {value}")
        if value % self.multiple_of:
            raise ParameterError(f"parameter {name!r} must be a multiple of {self.multiple_of} {self.why}, got {value}")
        return value


@dataclass(frozen=True)
class Float(Rule):
    """A number > 0; with `below`, also < below (a fraction: below=1)."""

    below: float | None = None

    def __call__(self, name: str, value: Any) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
        if not ok or (self.below is not None and not value < self.below):
            bound = f"between 0 and {self.below}" if self.below is not None else "positive"
            raise ParameterError(f"parameter {name!r} must be a number {bound}, got {value!r}")
        return float(value)


@dataclass(frozen=True)
class Bool(Rule):
    """True or False."""

    def __call__(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ParameterError(f"parameter {name!r} must be True or False, got {value!r}")
        return value


@dataclass(frozen=True)
class Text(Rule):
    """A string; non-empty unless `empty` is allowed."""

    empty: bool = False

    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or (not value and not self.empty):
            raise ParameterError(f"parameter {name!r} must be a {'' if self.empty else 'non-empty '}string, got {value!r}")
        return value


@dataclass(frozen=True)
class OneOf(Rule):
    """One of `options`."""

    options: Iterable[Any]

    def __call__(self, name: str, value: Any) -> Any:
        options = list(self.options)
        if value not in options:
            raise ParameterError(f"parameter {name!r} must be one of {options}, got {value!r}")
        return value


@dataclass(frozen=True)
class SubsetOf(Rule):
    """A non-empty list whose items are all in `options`, each once."""

    options: Iterable[Any]

    def __call__(self, name: str, values: Any) -> list:
        options = list(self.options)
        if not isinstance(values, list):
            raise ParameterError(f"parameter {name!r} must be a list, got {values!r}")
        bad = [v for v in values if v not in options]
        if not values or bad:
            raise ParameterError(f"parameter {name!r} must be a non-empty list drawn from {options}; bad: {bad or 'empty list'}")
        return _once(name, values)


@dataclass(frozen=True)
class IntList(Rule):
    """A list of distinct integers >= 0 (non-empty with `nonempty`)."""

    nonempty: bool = False

    def __call__(self, name: str, values: Any) -> list:
        if not isinstance(values, list) or not all(_is_int(v) and v >= 0 for v in values) or (self.nonempty and not values):
            need = "a non-empty" if self.nonempty else "a"
            raise ParameterError(f"parameter {name!r} must be {need} list of integers >= 0, got {values!r}")
        return _once(name, values)


@dataclass(frozen=True)
class TextList(Rule):
    """A list of distinct non-empty strings (may be empty: [] usually means 'all')."""

    def __call__(self, name: str, values: Any) -> list:
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise ParameterError(f"parameter {name!r} must be a list of non-empty strings, got {values!r}")
        return _once(name, values)


@dataclass(frozen=True)
class Parsed(Rule):
    """A string that `parse` turns into the value the chapter uses ('' gives None); the parser's
    ValueError names what is wrong."""

    parse: Callable[[str], Any]

    def __call__(self, name: str, value: Any) -> Any:
        Text(empty=True)(name, value)
        try:
            return self.parse(value) if value else None
        except ValueError as err:
            raise ParameterError(f"parameter {name!r}: {err}") from None


@dataclass(frozen=True)
class Budgets(Rule):
    """Training budgets: a non-empty list of [steps, batch size, training pairs], smallest first (each larger in
    steps x batch than the one before), or with `single` one such triple or [] (none)."""

    single: bool = False

    def __call__(self, name: str, value: Any) -> list:
        if self.single and value == []:
            return []
        items = [value] if self.single else value
        shape = "[steps, batch, training pairs]" if self.single else "a list of [steps, batch, training pairs]"
        if not isinstance(items, list) or not items or not all(
                isinstance(b, list) and len(b) == 3 and all(_is_int(x) and x >= 1 for x in b) and b[2] % 2 == 0 for b in items):
            raise ParameterError(f"parameter {name!r} must be {shape} of positive whole numbers, the training pairs "
                                 f"even, e.g. [150, 32, 512]; got {value!r}")
        sizes = [b[0] * b[1] for b in items]
        if sizes != sorted(sizes) or len(set(map(tuple, items))) != len(items):
            raise ParameterError(f"parameter {name!r}: give the budgets smallest first (steps x batch growing), each "
                                 f"once; got {value!r}")
        return items[0] if self.single else items


@dataclass(frozen=True)
class Device(Rule):
    """A torch device that exists here ('cpu', 'cuda', 'cuda:1', 'mps'); 'auto' becomes the best one."""

    def __call__(self, name: str, value: Any) -> str:
        try:
            return resolve_device(value)
        except ValueError as err:
            raise ParameterError(f"parameter {name!r}: {err}") from None


@dataclass(frozen=True)
class Dtype(Rule):
    """The name of a floating dtype: 'float32', 'bfloat16' or 'float16' (kept as the name)."""

    def __call__(self, name: str, value: Any) -> str:
        return OneOf(DTYPES)(name, value)


@dataclass(frozen=True)
class Keys(Rule):
    """A dict with exactly the keys of `rules`, each value checked by its rule (e.g. a training budget)."""

    rules: Mapping[str, Rule]

    def __call__(self, name: str, value: Any) -> dict:
        if not isinstance(value, dict) or set(value) != set(self.rules):
            raise ParameterError(f"parameter {name!r} must be a dict with exactly the keys {list(self.rules)}, got {value!r}")
        return {key: rule(f"{name}.{key}", value[key]) for key, rule in self.rules.items()}


def _writable_place(name: str, path: Path) -> None:
    """A ParameterError unless `path` could be made: its nearest existing ancestor is a writable folder."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ParameterError(f"parameter {name!r}: cannot make {str(path)!r}, since {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ParameterError(f"parameter {name!r}: cannot make {str(path)!r}, since {str(parent)!r} is not writable")


@dataclass(frozen=True)
class StorePath(Rule):
    """A result store: a folder that exists or can be made, not a file (kept as the string given)."""

    def __call__(self, name: str, value: Any) -> str:
        path = Path(Text()(name, value)).expanduser()
        if path.exists() and not path.is_dir():
            raise ParameterError(f"parameter {name!r}: store path {value!r} is a file; give a folder")
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise ParameterError(f"parameter {name!r}: store folder {value!r} is not writable")
        else:
            _writable_place(name, path)
        return value


@dataclass(frozen=True)
class OutputFile(Rule):
    """A file to write (e.g. an export): not a folder, in a folder that exists or can be made; '' (no file)
    only with `empty`."""

    empty: bool = False

    def __call__(self, name: str, value: Any) -> str:
        if not Text(empty=self.empty)(name, value):
            return value
        path = Path(value).expanduser()
        if path.is_dir():
            raise ParameterError(f"parameter {name!r}: {value!r} is a folder; give a file name (e.g. {value.rstrip('/')}/frame.json)")
        if path.exists() and not os.access(path, os.W_OK):
            raise ParameterError(f"parameter {name!r}: file {value!r} exists and is not writable")
        _writable_place(name, path)
        return value


PLAIN = (int, float, str, list, dict, type(None))  # what papermill or a parameter file can inject (bool is an int)
IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})  # a kernel's own names


def _imported(namespace: Mapping[str, Any], name: str) -> bool:
    """Whether `namespace[name]` is another module's own `name` (`from das_lib.tasks.pricetag.game import HYPOTHESES`),
    not a value set here (the kernel's namespace is itself the module __main__)."""
    dicts = (getattr(m, "__dict__", None) for m in list(sys.modules.values()))
    return any(isinstance(d, dict) and d is not namespace and d.get(name) is namespace[name] for d in dicts)


def unknown_names(namespace: Mapping[str, Any], known: Iterable[str]) -> list[str]:
    """The plain values in `namespace` that are no parameter: not in `known`, not declared with a type
    (`seed: int = 0`), not private (`_x`), not imported from a module, and not the kernel's own."""
    known = set(known) | set(namespace.get("__annotations__") or {}) | IPYTHON_NAMES
    shell = namespace.get("get_ipython")
    if callable(shell) and shell() is not None:
        known |= set(shell().user_ns_hidden)
    return [k for k, v in namespace.items()
            if not k.startswith("_") and k not in known and isinstance(v, PLAIN) and not _imported(namespace, k)]


def check(namespace: MutableMapping[str, Any], schema: Mapping[str, Rule | Callable[[Mapping[str, Any]], Rule]],
          allow: Iterable[str] = ()) -> None:
    """Check every parameter named in `schema`, in order, and write the checked value back; first refuse a
    plain value under a name that is no parameter (see `unknown_names`), suggesting the closest parameter.

    A rule that depends on parameters checked before it is given as a function of the namespace
    (`lambda p: params.SubsetOf(range(p["width"]))`). `allow` names the chapter's own plain values set
    before the check that are not parameters.
    """
    unknown = unknown_names(namespace, [*schema, *allow])
    if unknown:
        names = sorted({*schema, *(namespace.get("__annotations__") or {})})
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParameterError(f"unknown parameter {unknown[0]!r} (= {namespace[unknown[0]]!r}): {hint}"
                             f"this chapter's parameters are {names}")
    for name, rule in schema.items():
        if not isinstance(rule, Rule):
            rule = rule(namespace)
        namespace[name] = rule(name, namespace[name])


def built(names: str, make: Callable[[], Any]) -> Any:
    """`make()` (e.g. a grid made from the parameters), with its ValueError or KeyError re-raised naming the
    parameters `names` the user set, so that a bad combination stops the chapter before any work."""
    try:
        return make()
    except (ValueError, KeyError) as err:
        raise ParameterError(f"parameters {names}: {err}") from None


def grid_spec(names: str, make: Callable[[], Any], store: str, device: str) -> Any:
    """The grid spec `make()` builds from the parameters, checked by building its Grid (layers, positions and
    candidates the model and task have) on `store`, with any error naming the parameters `names`."""
    from das_lib.runs.grid import Grid

    spec = built(names, make)
    built(names, lambda: Grid(spec, store, device, progress=False))
    return spec


def require(condition: bool, name: str, message: str) -> None:
    """Raise a ParameterError about parameter `name` unless `condition` holds."""
    if not condition:
        raise ParameterError(f"parameter {name!r} {message}")


def check_site(task: PriceTagTask, n_layers: int, layer: int, position: str) -> Site:
    """The site (layer, role), or a ParameterError naming the valid layers or the searched roles."""
    if not _is_int(layer) or not 0 <= layer < n_layers:
        raise ParameterError(
            f"parameter 'layer' must be a decoder layer of the model, an integer in 0..{n_layers - 1}, got {layer!r}"
        )
    roles = task.searched_roles()
    if position not in roles:
        raise ParameterError(
            f"parameter 'position' must be a searched token role of this tokenizer, one of {roles}; got {position!r}"
        )
    return Site(layer, position)


def check_sites(task: PriceTagTask, model: str, layer: int, position: str, scan_layers: list[int],
                scan_positions: list[str]) -> list[Site]:
    """The sites a chapter trains at: (layer, position) where given, else every site of the scan over
    scan_layers ([]: every layer) and scan_positions; checked against the layers of `model` (a load_model
    name, read from its config without loading weights) and the task's searched roles, a ParameterError
    naming the first bad parameter."""
    n_layers = load_config(model).num_hidden_layers
    check_site(task, n_layers, 0 if layer == -1 else layer, position or task.searched_roles()[0])  # -1, "": scanned
    scan = {"scan_layers": scan_layers or list(range(n_layers)), "scan_positions": scan_positions}
    check(scan, {"scan_layers": SubsetOf(range(n_layers)), "scan_positions": SubsetOf(task.searched_roles())})
    layers = [layer] if layer != -1 else scan["scan_layers"]
    return [Site(l, p) for l in layers for p in ([position] if position else scan["scan_positions"])]  # noqa: E741


def cpu_threads(device: str, n: int = 1) -> None:
    """Give torch `n` threads when the chapter runs on the CPU (the book's chapters share the cores); a GPU
    run keeps torch's own setting for its host-side work."""
    if torch.device(device).type == "cpu":
        torch.set_num_threads(n)
