"""Named choices, one registry per kind: samplers, p-value methods, π₀ methods, lfdr nulls, maps.

A `Registry` maps a name to a function and a one-line description. The options
(`arb_jax.core.options.ARBOptions`), the command line's choices and help, the sweep and
docs/choices.md are all made from the registries, so a choice is defined once, where it is
implemented. Where a name is accepted a function is accepted too (`Registry.resolve`): a user's
own sampler, p-value or π₀ method runs in the same compiled pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "markdown"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Mapping[str, F], Generic[F]):
    """Name → function of one kind, each with a description; iterates over the names in order.

    Parameters
    ----------
    kind : str
        What the entries are, for messages ("sampler", "p-value method", ...).
    contract : str
        The signature every entry (and a user's function) has, for the docs.
    """

    def __init__(self, kind: str, contract: str):
        self.kind = kind
        self.contract = contract
        self._fns: dict[str, F] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str) -> Callable[[F], F]:
        """Decorator: register the function under ``name`` with the one-line ``doc``."""

        def add(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is registered already")
            self._fns[name] = fn
            self._docs[name] = doc
            return fn

        return add

    def add(self, name: str, fn: F, doc: str) -> None:
        """Register ``fn`` under ``name`` (the non-decorator form)."""
        self.register(name, doc)(fn)

    def __getitem__(self, name: str) -> F:
        try:
            return self._fns[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fns)

    def __len__(self) -> int:
        return len(self._fns)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._fns

    def unknown(self, name: Any) -> str:
        """The message for an unknown name: it lists the known ones."""
        return f"unknown {self.kind} {name!r}; known: {', '.join(self._fns)} (or a function {self.contract})"

    def check(self, choice: Any) -> Any:
        """``choice`` if it is a registered name or a callable; else ValueError listing the names."""
        if isinstance(choice, str):
            if choice not in self._fns:
                raise ValueError(self.unknown(choice))
            return choice
        if callable(choice):
            return choice
        raise ValueError(self.unknown(choice))

    def resolve(self, choice: str | F) -> F:
        """The function of a name, or ``choice`` itself when it is a function."""
        return self[self.check(choice)] if isinstance(choice, str) else self.check(choice)

    def doc(self, name: str) -> str:
        """The one-line description of ``name``."""
        self[name]  # noqa: B018 (raises for an unknown name)
        return self._docs[name]

    def help(self) -> str:
        """ "name: description; …" for a command-line help text."""
        return "; ".join(f"{k}: {v}" for k, v in self._docs.items())


def markdown(registries: Mapping[str, Registry]) -> str:
    """docs/choices.md: a section per registry, a row per name (made by ``python -m
    arb_jax.core.choices``; a test keeps the committed page equal to it)."""
    lines = [
        "# The named choices",
        "",
        "Generated from the registries of `arb_jax` (`python -m arb_jax.core.choices`); do not",
        "edit by hand. Where a name is accepted, a function with the signature shown is too.",
        "",
    ]
    for title, reg in registries.items():
        lines += [f"## {title}", "", f"A function {reg.contract}.", "", "| name | what it is |", "|---|---|"]
        lines += [f"| `{name}` | {reg.doc(name).replace('|', chr(92) + '|')} |" for name in reg]
        lines.append("")
    return "\n".join(lines)
