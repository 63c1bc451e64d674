"""Generic machinery for HF state dict <-> Flax params conversion tables.

A family's table is a list of ``Rule``: a regex on the HF key, the Flax leaf name that replaces the
key's last component, and a pair of per-tensor hooks (e.g. transpose). ``to_flax`` applies the table
to every key and then checks the result against the model's own parameter shapes, raising ONE
error that names every unused key, every missing parameter and every shape mismatch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

Hook = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    return np.array(x.T, order="C")


def oihw_to_hwio(x: np.ndarray) -> np.ndarray:
    """A torch ``Conv2d`` weight ``[out, in, h, w]`` as a Flax kernel ``[h, w, in, out]``."""
    return np.array(x.transpose(2, 3, 1, 0), order="C")


def hwio_to_oihw(x: np.ndarray) -> np.ndarray:
    return np.array(x.transpose(3, 2, 0, 1), order="C")


def to_numpy(v) -> np.ndarray:
    """A checkpoint tensor as numpy: torch tensors of in-memory models (tests, notebooks) included."""
    if hasattr(v, "detach"):
        return v.detach().cpu().float().numpy()
    return np.asarray(v)


def param_shapes(model, *example) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape of every parameter ``model.init(key, *example)`` creates (abstractly:
    ``jax.eval_shape``, no arrays allocated)."""
    import jax

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *example))
    return {k: v.shape for k, v in traverse_util.flatten_dict(shapes["params"]).items()}


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_pattern: str  # regex over the whole HF key; group 1 is the module path
    flax_leaf: str  # the Flax parameter name under that module path
    to_flax: Hook = identity
    to_hf: Hook = identity
    hf_leaf: str | None = None  # the HF leaf name when converting back (default: the key's last part)

    def match(self, key: str):
        return re.fullmatch(self.hf_pattern, key)


def linear_and_norm_rules(linear: str, norm: str) -> tuple[Rule, ...]:
    """The rules every transformer's table shares: a torch ``Linear``'s ``weight`` [out, in] is the
    ``kernel`` [in, out], a ``LayerNorm``'s ``weight`` is its ``scale``, and both modules' ``bias``
    is kept as it is. ``linear`` / ``norm``: group-free regexes of the full module paths."""
    return (
        Rule(rf"((?:{linear}))\.weight", "kernel", transpose, transpose, hf_leaf="weight"),
        Rule(rf"((?:{norm}))\.weight", "scale", hf_leaf="weight"),
        Rule(rf"((?:{linear})|(?:{norm}))\.bias", "bias"),
    )


class ConversionError(ValueError):
    """A checkpoint does not fit the model; the message lists every problem at once."""


def _hf_module_to_path(module: str) -> tuple[str, ...]:
    return tuple(module.split(".")) if module else ()


def to_flax(
    state_dict: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    expected_shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict:
    """Converts an HF state dict to a nested Flax params dict, checking it against ``expected_shapes``.

    ``expected_shapes`` maps Flax paths to shapes (from ``jax.eval_shape`` of ``model.init``).
    """
    rules = list(rules)
    ignore = [re.compile(p) for p in ignore]
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unused, mismatched = [], []
    for key, value in state_dict.items():
        if any(p.fullmatch(key) for p in ignore):
            continue
        rule, m = next(((r, r.match(key)) for r in rules if r.match(key)), (None, None))
        if rule is None:
            unused.append(key)
            continue
        path = _hf_module_to_path(m.group(1)) + (rule.flax_leaf,)
        if path not in expected_shapes:
            unused.append(key)
            continue
        array = rule.to_flax(np.asarray(value, dtype=np.float32))
        if array.shape != tuple(expected_shapes[path]):
            mismatched.append(
                f"{key}: checkpoint {tuple(np.shape(value))} -> {array.shape} but "
                f"{'/'.join(path)} expects {tuple(expected_shapes[path])}"
            )
            continue
        flat[path] = array
    missing = sorted("/".join(p) for p in expected_shapes if p not in flat)
    if unused or missing or mismatched:
        lines = [f"{source} does not match the model:"]
        if unused:
            lines.append(f"  {len(unused)} unused checkpoint key(s): " + ", ".join(sorted(unused)))
        if missing:
            lines.append(f"  {len(missing)} missing parameter(s): " + ", ".join(missing))
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es):\n    " + "\n    ".join(mismatched))
        raise ConversionError("\n".join(lines))
    return traverse_util.unflatten_dict(flat)


def to_hf(params: Mapping, rules: Iterable[Rule]) -> dict[str, np.ndarray]:
    """The inverse of ``to_flax``: a nested Flax params dict -> HF state dict (numpy)."""
    rules = list(rules)
    out: dict[str, np.ndarray] = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        module, leaf = ".".join(path[:-1]), path[-1]
        rule = next((r for r in rules if r.flax_leaf == leaf and _back_matches(r, module)), None)
        if rule is None:
            raise ConversionError(f"no conversion rule for Flax parameter {'/'.join(path)}")
        hf_leaf = rule.hf_leaf or leaf
        key = f"{module}.{hf_leaf}" if module else hf_leaf
        out[key] = np.array(rule.to_hf(np.asarray(value, dtype=np.float32)), order="C")
    return out


def _back_matches(rule: Rule, module: str) -> bool:
    leaf = rule.hf_leaf or rule.flax_leaf
    return rule.match(f"{module}.{leaf}" if module else leaf) is not None
