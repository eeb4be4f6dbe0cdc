"""High-level causal models: small programs with named intermediate variables.

A causal model is a hypothesis about how a network solves a task. Every counterfactual label in
this project comes from *running* one of these models with some variables fixed (an intervention),
never from a hand-written table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class Variable:
    """A named variable computed by `fn` from the values of its `parents`."""

    name: str
    parents: tuple[str, ...]
    fn: Callable[..., Any]


class CausalModel:
    """A deterministic causal model: input variables, computed variables in order, one output."""

    def __init__(self, name: str, inputs: Sequence[str], variables: Sequence[Variable], output: str):
        self.name = name
        self.inputs = tuple(inputs)
        self.variables = tuple(variables)
        known = set(self.inputs)
        for v in self.variables:
            missing = [p for p in v.parents if p not in known]
            if missing:
                raise ValueError(
                    f"causal model {name!r}: variable {v.name!r} reads {missing} before they are "
                    "defined; list variables in the order they are computed"
                )
            if v.name in known:
                raise ValueError(f"causal model {name!r}: variable {v.name!r} is defined twice")
            known.add(v.name)
        if output not in known:
            raise ValueError(f"causal model {name!r}: output {output!r} is not one of {sorted(known)}")
        self.output = output
        self.names = tuple(known)

    def __repr__(self) -> str:
        inner = ", ".join(f"{v.name}({', '.join(v.parents)})" for v in self.variables)
        return f"CausalModel({self.name!r}: inputs {self.inputs} -> {inner} -> output {self.output!r})"

    def _check_known(self, names: Sequence[str] | Mapping[str, Any]) -> None:
        unknown = [k for k in names if k not in self.names]
        if unknown:
            raise KeyError(f"cannot intervene on {unknown}: {self.name!r} has variables {list(self.names)}")

    def run(self, inputs: Mapping[str, Any], interventions: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Values of every variable for `inputs`, with the variables in `interventions` fixed."""
        interventions = dict(interventions or {})
        self._check_known(interventions)
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise KeyError(f"{self.name!r} needs inputs {list(self.inputs)}; missing {missing}")
        values = {k: interventions.get(k, inputs[k]) for k in self.inputs}
        for v in self.variables:
            values[v.name] = interventions[v.name] if v.name in interventions else v.fn(
                *(values[p] for p in v.parents)
            )
        return values

    def predict(self, inputs: Mapping[str, Any], interventions: Mapping[str, Any] | None = None) -> Any:
        """The output variable's value for `inputs` under `interventions`."""
        return self.run(inputs, interventions)[self.output]

    def interchange(self, base: Mapping[str, Any], source: Mapping[str, Any], variables: Sequence[str]) -> Any:
        """Counterfactual output: run `base` with `variables` set to the values they take on `source`."""
        self._check_known(variables)  # before reading them from the source run
        source_values = self.run(source)
        return self.predict(base, {v: source_values[v] for v in variables})
