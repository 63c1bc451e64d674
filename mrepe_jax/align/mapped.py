"""A fitted alignment map: the module, its variables, the two sites it connects, its provenance;
saved to disk as a bundle (safetensors + JSON, ``reading/bundles``) and loaded back.

A map knows where it belongs. ``fitted(r, site=..., params_hash=...)`` refuses a source site
other than the one it was trained on and representations of the wrong width, and warns when the
model it is applied to is not the one it was trained on (another ``params_hash``): maps trained
on one checkpoint's representation space silently mean nothing on another's.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from mrepe_jax.align.maps import MAP_KINDS, make_map
from mrepe_jax.reading.bundles import load_bundle, save_bundle

#: What a saved map's provenance must say (``model``/``weights_sha256`` may be None for maps
#: between arbitrary arrays; the rest is always known).
MAP_KEYS = ("model", "weights_sha256", "source_site", "target_site", "source_dim", "target_dim",
            "kind", "module", "config", "data", "data_sha256", "seed")
_BUNDLE = "alignment map bundle"


@dataclasses.dataclass(frozen=True)
class FittedMap:
    """``phi_{source_site -> target_site}`` ready to apply; ``info`` is its provenance."""

    module: nn.Module
    variables: Any
    source_site: str
    source_dim: int
    target_site: str
    target_dim: int
    info: dict = dataclasses.field(default_factory=dict)

    def __call__(self, r, site: str | None = None, params_hash: str | None = None):
        """Maps ``r`` [..., source_dim] to [..., target_dim]. ``site``/``params_hash``: where ``r``
        was read and the weights hash of the model it was read from, when the caller knows."""
        if site is not None and site != self.source_site:
            raise ValueError(f"this alignment map was trained on {self.source_site!r} -> "
                             f"{self.target_site!r} and cannot be applied at {site!r}")
        trained_on = self.info.get("weights_sha256")
        if params_hash is not None and trained_on is not None and params_hash != trained_on:
            warnings.warn(f"alignment map {self.source_site!r} -> {self.target_site!r} was trained "
                          f"on a model with params hash {trained_on[:12]}..., applied to "
                          f"{params_hash[:12]}...: its map may not mean anything there", stacklevel=2)
        if np.shape(r)[-1:] != (self.source_dim,):
            raise ValueError(f"alignment map {self.source_site!r} -> {self.target_site!r} takes "
                             f"width {self.source_dim}, got representations of shape {np.shape(r)}")
        return _apply(self.module, self.variables, jnp.asarray(r, jnp.float32))

    def provenance(self) -> dict:
        module = {f.name: getattr(self.module, f.name) for f in dataclasses.fields(self.module)
                  if f.name not in ("parent", "name")}
        return {"model": None, "weights_sha256": None, "data": None, "seed": None,
                **self.info, "source_site": self.source_site, "target_site": self.target_site,
                "source_dim": self.source_dim, "target_dim": self.target_dim,
                "kind": _kind(self.module), "module": module}

    def save(self, path):
        """Writes ``<path>.safetensors`` (every variable, keyed ``collection/.../leaf``) and
        ``<path>.json`` (``provenance()``); returns both paths."""
        arrays = {"/".join(k): np.asarray(v) for k, v in flatten_dict(self.variables).items()}
        return save_bundle(path, arrays, self.provenance(), required=MAP_KEYS)


# The module is static (hashable): maps of one configuration share one compiled program.
_apply = jax.jit(lambda module, variables, r: module.apply(variables, r), static_argnums=0)


def _kind(module: nn.Module) -> str:
    return next(k for k, cls in MAP_KINDS.items() if isinstance(module, cls))


def load_map(path) -> FittedMap:
    """A map saved by ``FittedMap.save``, verified (sha256 of its arrays, required keys) and with
    every variable's shape checked against the module its provenance describes."""
    arrays, meta = load_bundle(path, required=MAP_KEYS, kind=_BUNDLE)
    module = make_map(meta["kind"], **{k: v for k, v in meta["module"].items()})
    variables = unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in arrays.items()})
    expected = jax.eval_shape(module.init, jax.random.key(0),
                              jnp.zeros((1, meta["source_dim"]), jnp.float32))
    want = {"/".join(k): v.shape for k, v in flatten_dict(expected).items()}
    got = {k: v.shape for k, v in arrays.items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise ValueError(f"{_BUNDLE} {path} does not fit its {meta['kind']} module: "
                         + ", ".join(f"{k}: expected {want.get(k)}, found {got.get(k)}" for k in diff))
    info = {k: v for k, v in meta.items() if k not in ("source_site", "target_site", "source_dim",
                                                       "target_dim", "kind", "module")}
    return FittedMap(module, variables, meta["source_site"], meta["source_dim"], meta["target_site"],
                     meta["target_dim"], info)
