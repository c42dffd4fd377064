"""Old module paths kept working: ``import arb_jax.stats`` gives ``arb_jax.core.stats``.

The package was reorganised into folders (see ``docs/architecture.md`` and ``CHANGELOG.md``). A
finder on ``sys.meta_path`` answers each old dotted name with the module at its new place — the
same module object, so ``arb_jax.stats is arb_jax.core.stats`` — without keeping files at the old
paths. New code should import from the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Mapping

MOVED = {
    "arb_jax.bootstrap": "arb_jax.core.bootstrap",
    "arb_jax.stats": "arb_jax.core.stats",
    "arb_jax.regularize": "arb_jax.core.regularize",
    "arb_jax.pipeline": "arb_jax.core.pipeline",
    "arb_jax.files": "arb_jax.io.files",
    "arb_jax.images": "arb_jax.io.images",
    "arb_jax.plotting": "arb_jax.io.plotting",
    "arb_jax.simulate": "arb_jax.study.simulate",
    "arb_jax.metrics": "arb_jax.study.metrics",
    "arb_jax.sweep": "arb_jax.study.sweep",
    "arb_jax.report": "arb_jax.study.report",
    "arb_jax.finetune": "arb_jax.study.finetune",
    "arb_jax.hub": "arb_jax.checkpoints.hub",
    "arb_jax.loading": "arb_jax.checkpoints.loading",
    "arb_jax.demo_data": "arb_jax.demo.data",
    "arb_jax.train_demo": "arb_jax.demo.train",
}
"""Old dotted name → new dotted name of every module that moved inside ``arb_jax``."""


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve the old names in ``table`` to the modules at their new names.

    Parameters
    ----------
    table : mapping of str to str
        Old dotted module name → new dotted module name.
    """

    def __init__(self, table: Mapping[str, str]) -> None:
        self.table = dict(table)
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.table:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.table[spec.name])
        self._specs[spec.name] = module.__spec__  # the import system overwrites it; put it back
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        spec = self._specs.pop(getattr(module.__spec__, "name", ""), None)
        if spec is not None:
            module.__spec__ = spec


def install(table: Mapping[str, str]) -> AliasFinder:
    """Put one :class:`AliasFinder` for ``table`` on ``sys.meta_path`` (once per table).

    Parameters
    ----------
    table : mapping of str to str
        Old dotted module name → new dotted module name.

    Returns
    -------
    AliasFinder
        The finder now on ``sys.meta_path``.
    """
    for finder in sys.meta_path:
        if isinstance(finder, AliasFinder) and finder.table == dict(table):
            return finder
    finder = AliasFinder(table)
    sys.meta_path.insert(0, finder)
    return finder
