"""Programs written as expression trees, and the causal models that name one of their sub-expressions.

A family of causal models for a task is generated here, not hand-listed: a *formula* computes the
task's output from its inputs as an expression tree, and every computed sub-expression of it (a comparison,
a distance, a digit) can be the intermediate variable a network might hold. `program(formula, chosen)`
is the causal model that computes the `chosen` sub-expressions first, as variables, and the output
from them and the inputs; an interchange intervention on a variable then replaces every use of that
sub-expression. Two sub-expressions of one formula can be chosen together (two variables, each in its
own subspace, like the paper's Left and Right Boundary).

A sub-expression is identified by its text: the same text is the same computation wherever it occurs
in a tree (`amount` in `amount >= lb` and in `amount <= ub` is one input). Whether a formula computes
the task is checked by running it (`failures`): one that errs on some input is not a candidate.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from das_lib.method.causal import CausalModel, Variable


@dataclass(frozen=True, eq=False)
class Expr:
    """A node: an input (no op, no children), a constant (an op of no arguments) or op(*children)."""

    text: str
    op: Callable[..., Any] | None = None
    children: tuple["Expr", ...] = ()

    @property
    def is_input(self) -> bool:
        return self.op is None

    @property
    def is_constant(self) -> bool:
        return self.op is not None and not self.children

    def nodes(self) -> Iterator["Expr"]:
        """Every node once (by text), children before parents."""
        seen: set[str] = set()

        def walk(node: Expr) -> Iterator[Expr]:
            for child in node.children:
                yield from walk(child)
            if node.text not in seen:
                seen.add(node.text)
                yield node

        return walk(self)

    def inputs(self) -> tuple[str, ...]:
        """The input names this expression reads, in order of first appearance."""
        return tuple(n.text for n in self.nodes() if n.is_input)

    def evaluate(self, values: Mapping[str, Any], fixed: Mapping[str, Any] | None = None) -> Any:
        """The value on inputs `values`, with the sub-expressions named in `fixed` set to the given values."""
        return self.compiled(tuple(fixed or ()))(values, fixed or {})

    @functools.lru_cache(maxsize=None)
    def compiled(self, fixed: tuple[str, ...] = ()) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Any]:
        """`evaluate` as one closure per node (the tree is walked once, not at every call), for the
        sub-expressions `fixed` given their values."""
        text, op = self.text, self.op
        if text in fixed:
            return lambda values, given: given[text]
        if self.is_input:
            return lambda values, given: values[text]
        if self.is_constant:
            value = op()
            return lambda values, given: value
        kids = [c.compiled(fixed) for c in self.children]
        if len(kids) == 1:
            (a,) = kids
            return lambda values, given: op(a(values, given))
        if len(kids) == 2:
            a, b = kids
            return lambda values, given: op(a(values, given), b(values, given))
        return lambda values, given: op(*(k(values, given) for k in kids))

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"


def leaf(name: str) -> Expr:
    """An input of the task."""
    return Expr(name)


def constant(text: str, value: Any) -> Expr:
    """A fixed value (a threshold), written as `text`."""
    return Expr(text, lambda: value)


def node(text: str, op: Callable[..., Any], *children: Expr) -> Expr:
    """op(*children), written as `text` (the text names the computation: keep it unique per computation)."""
    return Expr(text, op, tuple(children))


def variable_nodes(formula: Expr) -> list[Expr]:
    """The intermediate variables of a formula: every computed sub-expression but the formula itself
    (inputs are the task's, constants never change)."""
    return [n for n in formula.nodes() if n.children and n.text != formula.text]


def sibling_pairs(formula: Expr) -> list[tuple[Expr, Expr]]:
    """The two arguments of each two-argument node, once each, when both are intermediate variables (two
    variables chosen together, each in its own subspace)."""
    pairs: dict[tuple[str, str], tuple[Expr, Expr]] = {}
    for n in formula.nodes():
        a, b = n.children if len(n.children) == 2 else (None, None)
        if a is not None and a.children and b.children and a.text != b.text:
            pairs.setdefault((a.text, b.text), (a, b))
    return list(pairs.values())


def program(name: str, formula: Expr, chosen: Sequence[str], output: str = "answer") -> CausalModel:
    """The causal model computing the sub-expressions `chosen` (by text) of `formula`, then `output` from them.

    An input chosen as a variable stays an input (an intervention on an input replaces it everywhere)."""
    by_text = {n.text: n for n in formula.nodes()}
    missing = [c for c in chosen if c not in by_text]
    if missing:
        raise KeyError(f"{missing} are not sub-expressions of {formula.text!r}")
    inputs = formula.inputs()
    computed = [c for c in chosen if not by_text[c].is_input]
    variables = [Variable(c, inputs, _subtree(by_text[c], inputs)) for c in computed]
    variables.append(Variable(output, (*inputs, *computed), _readout(formula, inputs, computed)))
    return CausalModel(name, inputs, variables, output)


def _subtree(expr: Expr, inputs: tuple[str, ...]) -> Callable[..., Any]:
    run = expr.compiled()
    return lambda *values: run(dict(zip(inputs, values)), {})


def _readout(formula: Expr, inputs: tuple[str, ...], computed: list[str]) -> Callable[..., Any]:
    n, run = len(inputs), formula.compiled(tuple(computed))
    return lambda *values: run(dict(zip(inputs, values[:n])), dict(zip(computed, values[n:])))


def failures(model: CausalModel, reference: Callable[[Mapping[str, Any]], Any],
             inputs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The inputs on which running `model` gives another output than `reference`: a program that has any
    does not compute the task."""
    return [x for x in inputs if model.predict(x) != reference(x)]


class Candidate(Protocol):
    """A causal model and the variables whose alignment is searched (one subspace each)."""

    key: str
    title: str
    model: CausalModel
    variables: tuple[str, ...]


@dataclass(frozen=True)
class Hypothesis:
    """A hand-written `Candidate`: a causal model, its name, and the variables whose alignment is searched."""

    key: str
    title: str
    model: CausalModel
    variables: tuple[str, ...]
