"""Registers hf_afr's checkpoint loaders (compact, structured) with transformers, without importing transformers.

`import hf_afr` must make `AutoModel*.from_pretrained` able to read compact checkpoints, yet stay
cheap (so that `hf-afr --help` answers at once): registering needs transformers' quantizer registry,
which imports torch. So registration happens when that registry is imported (a post-import hook on
`transformers.quantizers.auto`), or at once if it already is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType

_REGISTRY_MODULE = "transformers.quantizers.auto"


def _register() -> None:
    from .checkpoint import loader, structured_loader

    loader.register()
    structured_loader.register()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds the registry module through the other finders and registers once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _register()


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else as soon as it is."""
    if _REGISTRY_MODULE in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
