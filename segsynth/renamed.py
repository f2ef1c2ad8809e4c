"""Old names kept for one release: each still resolves to the renamed object, with a ``DeprecationWarning``.

Two tools, one per kind of rename:

- :func:`renamed_attributes`: a module ``__getattr__`` that answers an old attribute name (a class
  or function renamed in place) with the new one's object;
- :func:`alias_package`: an old package path (``segsynth.backbone``) made to stand for a moved one
  (``segsynth.controlnet``), submodules included, so ``import old.sub`` gives the very module
  objects of the new package and pickles or dotted paths written before the move still load.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now ``new`` and that the old name goes in the next release."""
    warnings.warn(f"{old} is renamed {new}; the old name will be removed in the next release",
                  DeprecationWarning, stacklevel=stacklevel)


def renamed_attributes(module: str, renamed: Mapping[str, str],
                       fallback: Callable[[str], Any] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module`` that maps each old name of ``renamed`` (old -> new) to
    the new name's object, warning on every access (the old name is never cached on the module).

    Args:
        module: the module's ``__name__``.
        renamed: old attribute name -> its new name in the same module.
        fallback: the module's own ``__getattr__`` (e.g. from :func:`segsynth.lazy.lazy_exports`),
            asked for every other name.
    """

    def __getattr__(name: str) -> Any:
        new = renamed.get(name)
        if new is not None:
            warn_renamed(f"{module}.{name}", f"{module}.{new}")
            return getattr(sys.modules[module], new)
        if fallback is not None:
            return fallback(name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def alias_package(old: str, new: str) -> None:
    """Make the package ``old`` (being imported now) an alias of the package ``new``.

    Warns once, at the old package's import; then every public name of ``new`` is set on ``old``
    and every submodule ``new.x`` is registered as ``old.x`` in ``sys.modules``, so
    ``import old.x`` and ``from old.x import y`` return the new package's objects, not copies.
    """
    warn_renamed(f"package {old}", new, stacklevel=4)
    package = importlib.import_module(new)
    shim = sys.modules[old]
    shim.__all__ = list(getattr(package, "__all__", ()))
    for name in shim.__all__:
        setattr(shim, name, getattr(package, name))
    if hasattr(package, "__getattr__"):  # the new package's own renamed names, answered (and warned) by it
        shim.__getattr__ = package.__getattr__
    for info in pkgutil.iter_modules(package.__path__):
        submodule = importlib.import_module(f"{new}.{info.name}")
        sys.modules[f"{old}.{info.name}"] = submodule
        setattr(shim, info.name, submodule)


_YAML_SUFFIXES = (".yaml", ".yml")


def _old_config_out_order(config: Any, out: Any) -> bool:
    """Whether ``(config, out)`` were passed in the former order ``(out, config)``.

    Decided by what the values are: a config object (any pydantic model) in the ``out`` slot, a
    path with no ``out`` at all (the former ``f(data, out)``), or a YAML file in the ``out`` slot
    next to a path that is not one. Two paths that are not YAML files are read in the new order.
    """
    from pydantic import BaseModel

    if isinstance(out, BaseModel):
        return True
    if out is None:
        return config is not None and not isinstance(config, BaseModel)
    return _is_yaml_path(out) and not _is_yaml_path(config)


def _is_yaml_path(value: Any) -> bool:
    """Whether ``value`` is a path (``str`` or path-like) naming a YAML file."""
    return isinstance(value, (str, PathLike)) and str(value).lower().endswith(_YAML_SUFFIXES)


def former_out_config_order(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Accept a ``fn(data, config, out, ...)`` called the former way, ``fn(data, out, config, ...)``.

    Every stage now takes ``(data, config, out)``; a call in the old order is recognised by
    :func:`_old_config_out_order`, swapped, and warned about (for one release).
    """

    @functools.wraps(fn)
    def accepting(data: Any, config: Any = None, out: Any = None, *args: Any, **kwargs: Any) -> Any:
        if _old_config_out_order(config, out):
            warnings.warn(f"{fn.__name__}(data, out, config) is deprecated: pass {fn.__name__}(data, config, out); "
                          "the old order will be refused in the next release", DeprecationWarning, stacklevel=2)
            config, out = out, config
        if out is None:
            raise TypeError(f"{fn.__name__}() needs the output folder out")
        return fn(data, config, out, *args, **kwargs)

    return accepting
