"""One call that forgets every compiled program and cached value of the package, for a long process
(a notebook that loads one checkpoint after another).

What holds on to a model, its params or a user's closure after the user has dropped them:

- JAX's own caches. Every program here is a ``jax.jit`` whose static arguments (a model, a
  ``TowerApply``, an edits function, a metric's function) are part of its cache key, and a closure
  that captures params keeps them in its compiled program. ``jax.clear_caches()`` empties them.
- The package's ``functools`` caches. They are keyed on what a program depends on (a mesh, an
  optimizer's hyperparameters, a config, shapes), never on a model or its arrays, so they do not
  keep a model alive; they are cleared too so that "clear" means the whole package.

``clear_caches()`` does both. Importing this module also registers the package's caches with JAX's
cache management (``jax._src.util.register_cache``, where this JAX version has it), so a plain
``jax.clear_caches()`` clears them as well; ``mrepe_jax.clear_caches()`` is the call that does not
depend on that private hook.

The caches are found, not registered: every ``functools.lru_cache`` / ``functools.cache`` at module
level in an imported ``mrepe_jax`` module. No registry is kept (nothing global to mutate, nothing
for a new cache to forget to join), and a module that was never imported has no entries to clear.
A cache local to a function (e.g. one built per training run) dies with its owner.
"""

from __future__ import annotations

import functools
import sys

import jax

PACKAGE = "mrepe_jax"


def package_caches() -> dict[str, functools._lru_cache_wrapper]:
    """``{"module.name": cache}`` for every module-level ``functools`` cache of the imported
    modules of the package."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        for attr, value in list(vars(module).items()):
            # The defining module only: a cache imported from elsewhere is listed (and cleared) once.
            if isinstance(value, functools._lru_cache_wrapper) and getattr(value, "__module__", None) == name:
                found[f"{name}.{attr}"] = value
    return found


def _clear_package_caches() -> None:
    for cache in package_caches().values():
        cache.cache_clear()


def clear_caches() -> None:
    """Clears JAX's compilation and staging caches (``jax.clear_caches()``) and every cache of the
    package. After ``del model, params``, ``gc.collect()`` and this call, nothing here references
    them; the next call of any program compiles it again."""
    jax.clear_caches()
    _clear_package_caches()


class _JaxHook:
    """What JAX's cache registry expects of a cache (``cache_clear``, ``cache_info``,
    ``cache_keys``); clearing it clears the package's caches (not JAX's: no recursion)."""

    def cache_clear(self) -> None:
        _clear_package_caches()

    def cache_info(self):
        return {name: cache.cache_info() for name, cache in package_caches().items()}

    def cache_keys(self) -> list:
        return []


# Module-level so that JAX's registry (a WeakKeyDictionary) keeps it; private API, so optional.
_JAX_HOOK = _JaxHook()
try:
    from jax._src import util as _jax_util

    _jax_util.register_cache(_JAX_HOOK, f"{PACKAGE} functools caches")
except (ImportError, AttributeError, TypeError):  # pragma: no cover - a JAX without the hook
    pass
