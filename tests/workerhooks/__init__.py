"""Test hooks for the tuner's spawned trial workers, kept out of the product code.

A test puts ``site/`` (and the checkout) on the PYTHONPATH of the command it runs (``env``).
Every new interpreter started with that path, each spawned trial worker among them, runs
``site/sitecustomize.py`` at startup, which calls ``install()`` only when one of the test's own
variables is set; ``install()`` wraps functions of ``tuner.worker.main`` as it is imported:

- ``TUNER_TEST_FAULTS`` (faults.py): FAKE failures, a real worker made to abort, segfault, hang,
  exit, kill itself, die as llama.cpp dies on a CUDA out-of-memory or in the AMX backend, or
  raise, at a chosen stage of a chosen setting.
- ``TUNER_TEST_SPAWN_RECORD`` (spawnproof.py): each worker records whether the test process's
  in-memory marker reached it (spawned: no; forked: yes).

A wrapped function that no longer exists fails the worker's import, and so the test."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
TARGET = "tuner.worker.main"  # the module whose functions the hooks wrap


def env(**variables: str) -> dict[str, str]:
    """A command's environment additions: ``variables`` and a PYTHONPATH of ``site/`` and the
    checkout (the checkout as tests/cli_run.py gives every command)."""
    return {**variables, "PYTHONPATH": os.pathsep.join([str(SITE), str(REPO)])}


def install() -> None:
    """Wrap ``tuner.worker.main`` as the variables set ask: now if it is imported already,
    else as soon as it is."""
    from tests.workerhooks import faults, spawnproof

    patches = [hook.patch for hook in (faults, spawnproof) if os.environ.get(hook.VAR)]
    if not patches:
        return

    def patch(module: ModuleType) -> None:
        for one in patches:
            one(module)

    if TARGET in sys.modules:
        patch(sys.modules[TARGET])
    else:
        sys.meta_path.insert(0, _AfterImport(TARGET, patch))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds module ``name`` as the other finders do, and runs ``patch`` on it right after it
    is executed (before any importer sees it)."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Patching(spec.loader, self.patch)
                return spec
        return None


class _Patching(importlib.abc.Loader):
    """A module's own loader, then ``patch`` on the executed module."""

    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[ModuleType], None]) -> None:
        self.loader, self.patch = loader, patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name: str) -> object:  # get_source, get_filename... as the loader's
        return getattr(self.loader, name)
