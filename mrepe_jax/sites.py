"""Named sites: the one table of intermediate states every tower exposes (DESIGN.md §3).

A *site* is a named point in a forward pass, such as ``vision.layers.3.resid_post``. Towers call
``sites(module, name, x)`` at each of them; that call applies the edits registered for ``name`` and
records ``x`` when ``name`` matches one of the ``capture`` glob patterns. Both are pure: edits are
array pytrees passed into ``apply`` and captured values come back as outputs, so everything here
composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Activation layouts, fixed for every tower so that ``where`` masks mean the same thing everywhere:

=================================  =====================================
site point                          shape
=================================  =====================================
embed, resid_*, attn_out, mlp_out   [batch, token, d_model]
attn.q, attn.k, attn.v, attn.z      [batch, token, head, d_head]
attn.logits, attn.pattern           [batch, head, query, key]
mlp.hidden                          [batch, token, d_mlp]
pooled, proj                        [batch, d]
=================================  =====================================

``site_axes(name)`` gives these axes by name (``batch``, ``token``, ``head``, ``feature``, ``query``,
``key``); edits that select positions name the axes they mean (``mrepe_jax.edits``).

``{tower}.embed`` is not always the input of layer 0 (``{tower}.layers.0.resid_pre``):

=====================  ===================================================  =======================
tower                  ``embed``                                            ``layers.0.resid_pre``
=====================  ===================================================  =======================
vision (CLIP), audio   patch + class + position embeddings, *before*        ``pre_layrnorm(embed)``
(ToyWorld's ViT)       ``pre_layrnorm``
vision (BLIP-2)        patch + class + position embeddings (no pre-norm)    ``embed``
audio (CLAP's HTSAT)   patch embedding after its norm (and fusion)          ``embed`` (as
                                                                            ``stages.0.blocks.0``)
text                   token + position embeddings                          ``embed``
text (CLAP's RoBERTa)  LayerNorm(token + type + position embeddings)        ``embed``
qformer                query embeddings after the Q-Former's layernorm      ``embed``
lm                     token embeddings (or ``inputs_embeds``) + positions  ``embed``
=====================  ===================================================  =======================

So an edit at CLIP's ``vision.embed`` reaches layer 0 through ``pre_layrnorm`` (which normalises
each token's mean and scale away); one at ``vision.layers.0.resid_pre`` reaches it as is.
``proj`` is the unnormalised projection; CLIP's ``image_embeds`` / ``text_embeds`` outputs are it
L2-normalised.

``attn.logits`` is the raw ``Q K^T`` *before* the ``1/sqrt(d_k)`` scaling and before the causal /
padding mask, which is where eq 7 of the paper adds its concept mask ``M_c``.

Hierarchical towers (CLAP's HTSAT audio encoder, a Swin transformer) group their blocks in stages
whose token grid and width change from stage to stage; their block sites are
``{tower}.stages.{s}.blocks.{b}.{point}`` (``block_site``, ``hierarchical_site_names``) with the same
``LAYER_POINTS``. Residual points keep ``[batch, token, d_stage]`` (tokens in raster order over the
stage's grid); attention runs inside windows, so its points add a ``window`` axis:

=================================  ================================================================
site point (windowed attention)     shape
=================================  ================================================================
attn.q, attn.k, attn.v, attn.z      [batch, window, token, head, d_head]
attn.logits, attn.pattern           [batch, window, head, query, key]
=================================  ================================================================

There ``window`` counts the windows of the (padded, cyclically shifted) grid in raster order and
``token`` / ``query`` / ``key`` a position inside its window, in raster order: exactly
transformers' ``[batch * windows, head, query, key]`` attentions with the batch axis split out.
``attn.logits`` is again the raw ``Q K^T``, before the scaling, the relative position bias and the
shifted-window mask. The blocks of such a tower run unrolled (static names, no ``AtLayer``
wildcards); ``stages.{s+1}.blocks.0.resid_pre`` is stage ``s``'s patch merging of its last
``resid_post``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mrepe_jax import edits as edits_lib
from mrepe_jax.layouts import site_axes  # noqa: F401  (re-exported: part of the site table)

TOWERS = ("vision", "text", "audio", "qformer", "lm")

ATTN_POINTS = ("attn.q", "attn.k", "attn.v", "attn.logits", "attn.pattern", "attn.z")
LAYER_POINTS = (
    ("resid_pre",) + ATTN_POINTS + ("attn_out", "resid_mid", "mlp.hidden", "mlp_out", "resid_post")
)
# The Q-Former's cross-attention block sits between its self-attention and its MLP.
XATTN_POINTS = tuple("x" + p for p in ATTN_POINTS) + ("xattn_out", "resid_xmid")
TOWER_POINTS = ("embed", "pooled", "proj")

COLLECTION = "intermediates"


def layer_site(tower: str, layer: int, point: str) -> str:
    """The name of ``point`` in layer ``layer`` of ``tower``, e.g. ``vision.layers.3.resid_post``."""
    return f"{tower}.layers.{layer}.{point}"


def tower_site_names(tower: str, num_layers: int, cross_attention: bool = False) -> tuple[str, ...]:
    """Every site of one tower, in forward order."""
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; towers are {TOWERS}")
    names = [f"{tower}.embed"]
    for i in range(num_layers):
        for point in LAYER_POINTS:
            names.append(layer_site(tower, i, point))
            if cross_attention and point == "resid_mid":
                names.extend(layer_site(tower, i, p) for p in XATTN_POINTS)
    names += [f"{tower}.pooled", f"{tower}.proj"]
    return tuple(names)


def block_site(tower: str, stage: int, block: int, point: str) -> str:
    """The name of ``point`` in block ``block`` of stage ``stage`` of a hierarchical tower, e.g.
    ``audio.stages.1.blocks.0.attn.pattern``."""
    return f"{tower}.stages.{stage}.blocks.{block}.{point}"


def hierarchical_site_names(tower: str, depths: Sequence[int]) -> tuple[str, ...]:
    """Every site of a tower whose blocks are grouped in stages (``depths[s]`` blocks in stage
    ``s``), in forward order: ``embed``, each block's ``LAYER_POINTS``, ``pooled``, ``proj``."""
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; towers are {TOWERS}")
    names = [f"{tower}.embed"]
    for s, depth in enumerate(depths):
        names += [block_site(tower, s, b, p) for b in range(depth) for p in LAYER_POINTS]
    return tuple(names + [f"{tower}.pooled", f"{tower}.proj"])


def layer_sites(known: Sequence[str], tower: str, point: str) -> tuple[str, ...]:
    """``point`` at every layer of ``tower`` among the site names ``known`` (a model's
    ``site_names()``), in forward order: ``{tower}.layers.{i}.{point}``, or a hierarchical tower's
    ``{tower}.stages.{s}.blocks.{b}.{point}``. What the stages call "each layer" whatever the
    tower's shape; an error when the tower has no such site."""
    found = tuple(n for n in known if (m := _LAYER.match(n) or _BLOCK.match(n))
                  and m["tower"] == tower and m["point"] == point)
    if not found:
        towers = sorted({n.split(".")[0] for n in known})
        raise ValueError(f"no {tower!r} layer has a {point!r} site (towers: {towers}; points: "
                         f"{LAYER_POINTS})")
    return found


def near_matches(name: str, known: Sequence[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, known, n=n, cutoff=0.5)


def _unknown(kind: str, name: str, known: Sequence[str]) -> ValueError:
    layer = _LAYER.match(name)
    if layer:  # a layer past the tower's last: say how many it has, not what is spelled alike
        tower = layer.group("tower")
        indices = {int(m.group("layer")) for m in map(_LAYER.match, known)
                   if m and m.group("tower") == tower}
        if indices and int(layer.group("layer")) not in indices:
            return ValueError(f"unknown site {name!r} in {kind}: {tower} has {len(indices)} layers "
                              f"({min(indices)}-{max(indices)})")
    block = _BLOCK.match(name)
    if block:  # a stage or block past the tower's: say what it has
        tower, stage = block["tower"], int(block["stage"])
        depths: dict[int, int] = {}
        for m in map(_BLOCK.match, known):
            if m and m["tower"] == tower:
                depths[int(m["stage"])] = max(depths.get(int(m["stage"]), 0), int(m["block"]) + 1)
        if depths and stage not in depths:
            return ValueError(f"unknown site {name!r} in {kind}: {tower} has {len(depths)} stages "
                              f"(0-{max(depths)})")
        if depths and int(block["block"]) >= depths[stage]:
            return ValueError(f"unknown site {name!r} in {kind}: {tower} stage {stage} has "
                              f"{depths[stage]} blocks (0-{depths[stage] - 1})")
    close = near_matches(name, known)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown site {name!r} in {kind}{hint} (the model has {len(known)} sites)")


@functools.lru_cache(maxsize=65536)
def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """True when ``name`` matches one of the glob ``patterns`` (``*`` also crosses dots)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def resolve_capture(patterns: Iterable[str] | str, known: Sequence[str]) -> tuple[str, ...]:
    """Validates capture patterns: each must match at least one site of the model."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    patterns = tuple(patterns)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(k, p) for k in known):
            raise _unknown("capture", p, known)
    return patterns


_BLOCK = re.compile(r"^(?P<tower>[a-z]+)\.stages\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.(?P<point>.+)$")
_WILDCARD = re.compile(r"^(?P<tower>[a-z]+)\.layers\.\*\.(?P<point>.+)$")
_LAYER = re.compile(r"^(?P<tower>[a-z]+)\.layers\.(?P<layer>\d+)\.(?P<point>.+)$")
# The name a scanned layer stack gives a site while its layer index is traced; its captures come
# back stacked over layers and are renamed per layer (``per_layer_captures``).
STACKED = "#"
_STACKED_NAME = re.compile(r"^(?P<tower>[a-z]+)\.layers\.#\.(?P<point>.+)$")


def validate_edits(edits: Mapping[str, Any] | None, known: Sequence[str]) -> dict[str, Any]:
    """Checks edit keys against the model's site table and each edit against its site kind.

    A key is a site name, or a layer wildcard ``{tower}.layers.*.{point}`` whose edits are all
    ``AtLayer`` (the layer they apply at is an array, e.g. swept under ``jit``).
    """
    edits = dict(edits or {})
    known_set = set(known)
    for name, edit in edits.items():
        wildcard = _WILDCARD.match(name)
        if wildcard:
            # Not every layer need have the point (the Q-Former's xattn.* exist every Nth layer).
            layers = _layers_with(known, wildcard["tower"], wildcard["point"])
            if not layers:
                raise _unknown("edits", name, known)
        elif name not in known_set:
            raise _unknown("edits", name, known)
        for e in edits_lib.as_tuple(edit):
            if wildcard:
                if not isinstance(e, edits_lib.AtLayer):
                    raise TypeError(f"edits at the layer wildcard {name!r} must be AtLayer(layer, "
                                    f"edit), got a {type(e).__name__}")
                _check_layer(e.layer, layers, name)
                e = e.edit
            elif isinstance(e, edits_lib.AtLayer):
                raise TypeError(f"AtLayer belongs under a layer wildcard key such as "
                                f"'{name.rsplit('.layers.', 1)[0]}.layers.*.<point>', not {name!r}")
            if not isinstance(e, edits_lib.Edit):
                raise TypeError(
                    f"edit at site {name!r} is a {type(e).__name__}; expected one of "
                    f"{[t.__name__ for t in edits_lib.EDIT_TYPES]} (or another edits.Edit) or a tuple of them"
                )
            if isinstance(e, edits_lib.AttnBias) and not name.endswith("attn.logits"):
                raise ValueError(
                    f"AttnBias is an attention-logit edit (eq 7) but site {name!r} is not an "
                    "'*.attn.logits' site"
                )
            edits_lib.check_values(e, name)
    return edits


def _layers_with(known: Sequence[str], tower: str, point: str) -> tuple[int, ...]:
    """The layers of ``tower`` that have the site ``point``."""
    return tuple(int(m["layer"]) for k in known
                 if (m := _LAYER.match(k)) and m["tower"] == tower and m["point"] == point)


def _check_layer(layer, layers: tuple[int, ...], name: str) -> None:
    """An ``AtLayer`` whose layer is known before tracing must name a layer that has the site;
    otherwise its edit would silently apply nowhere. A traced layer (a sweep) is not checked."""
    if isinstance(layer, jax.core.Tracer):
        return
    values = np.asarray(layer).ravel()
    missing = sorted({int(v) for v in values} - set(layers))
    if missing:
        raise ValueError(f"AtLayer at {name!r} names layer(s) {missing}, which have no such site; "
                         f"it exists on layers {list(layers)}")


@struct.dataclass
class Sites:
    """Edits and capture patterns threaded through a forward pass.

    ``edits`` maps site names (or layer wildcards, see ``validate_edits``) to an edit or a tuple of
    edits (applied in order); it is a pytree with array leaves, so its values may be traced,
    vmapped or differentiated. ``capture`` is a static tuple of glob patterns.
    """

    edits: dict[str, Any] = struct.field(default_factory=dict)
    capture: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def __call__(self, module: nn.Module, name: str, x):
        edit = self.edits.get(name)
        if edit is not None:
            x = edits_lib.apply_edits(edit, x, name)
        if self.capture and matches(name, self.capture):
            module.sow(COLLECTION, name, x, init_fn=lambda: None, reduce_fn=lambda _, v: v)
        return x

    def layer(self, module: nn.Module, tower: str, index, point: str, x, num_layers: int):
        """The site ``point`` of layer ``index`` of ``tower``; ``index`` is an int, or traced when
        the layer runs inside a scan over a layer stack (then an edit for layer ``L`` applies where
        ``index == L`` and a capture is recorded under the ``STACKED`` name)."""
        if isinstance(index, int):
            x = self(module, layer_site(tower, index, point), x)
        else:
            for layer, edit in self._layer_edits(tower, point):
                edited = edits_lib.apply_edits(edit, x, layer_site(tower, layer, point))
                x = jnp.where(index == layer, edited, x)
            if self.capture and any(matches(layer_site(tower, i, point), self.capture)
                                    for i in range(num_layers)):
                module.sow(COLLECTION, layer_site(tower, STACKED, point), x, init_fn=lambda: None,
                           reduce_fn=lambda _, v: v)
        wildcard = layer_site(tower, "*", point)
        for e in edits_lib.as_tuple(self.edits.get(wildcard, ())):
            x = jnp.where(index == e.layer, edits_lib.apply_edits(e.edit, x, wildcard), x)
        return x

    def _layer_edits(self, tower: str, point: str):
        for name, edit in self.edits.items():
            m = _LAYER.match(name)
            if m and m["tower"] == tower and m["point"] == point:
                yield int(m["layer"]), edit

    def touches(self, tower: str, index, block: str, num_layers: int) -> bool:
        """Whether any site of ``block`` (``attn``, ``xattn``) in layer ``index`` (every layer when
        it is traced) is edited or captured: then a fused kernel must give way to explicit code."""
        layers = [index] if isinstance(index, int) else range(num_layers)
        points = [f"{block}.{p}" for p in ("q", "k", "v", "logits", "pattern", "z")]
        names = [layer_site(tower, i, p) for i in [*layers, "*"] for p in points]
        return any(n in self.edits for n in names) or (
            bool(self.capture) and any(matches(n, self.capture) for n in names))


@dataclasses.dataclass(frozen=True)
class LayerSites:
    """The sites of one layer: ``site(point, x)`` for ``{tower}.layers.{index}.{point}``, where
    ``index`` is an int or, inside a scanned layer stack, a traced array (``Sites.layer``)."""

    sites: Sites
    module: nn.Module
    tower: str
    index: Any
    num_layers: int

    def __call__(self, point: str, x):
        return self.sites.layer(self.module, self.tower, self.index, point, x, self.num_layers)

    def touches(self, block: str) -> bool:
        return self.sites.touches(self.tower, self.index, block, self.num_layers)

    def bind(self, module: nn.Module) -> LayerSites:
        """The same layer's sites, recorded under ``module`` (a submodule of the layer)."""
        return dataclasses.replace(self, module=module)


@dataclasses.dataclass(frozen=True)
class BlockSites:
    """The sites of one block of a hierarchical tower: ``site(point, x)`` for
    ``{tower}.stages.{stage}.blocks.{block}.{point}`` (static indices: such blocks run unrolled)."""

    sites: Sites
    module: nn.Module
    tower: str
    stage: int
    block: int

    def __call__(self, point: str, x):
        return self.sites(self.module, block_site(self.tower, self.stage, self.block, point), x)

    def bind(self, module: nn.Module) -> BlockSites:
        """The same block's sites, recorded under ``module`` (a submodule of the block)."""
        return dataclasses.replace(self, module=module)


def per_layer_captures(stacked: Mapping[str, Any], capture: tuple[str, ...], layers) -> dict[str, Any]:
    """Captures of a scanned stack, ``{"vision.layers.#.point": [L, ...]}``, renamed per layer and
    filtered by the capture patterns: ``{"vision.layers.3.point": [...], ...}``. ``layers`` are
    the indices the stacked axis holds, in order."""
    out = {}
    for name, value in stacked.items():
        m = _STACKED_NAME.match(name)
        if m is None:
            out[name] = value
            continue
        for j, layer in enumerate(layers):
            concrete = layer_site(m["tower"], layer, m["point"])
            if matches(concrete, capture):
                out[concrete] = value[j]
    return out


def collect(intermediates: Mapping[str, Any]) -> dict[str, Any]:
    """Flattens Flax's per-module ``intermediates`` tree into ``{site_name: array}``."""
    out: dict[str, Any] = {}

    def walk(tree):
        for key, value in tree.items():
            if isinstance(value, Mapping):
                walk(value)
            else:
                out[key] = value

    walk(intermediates)
    return out


class SitedModel(nn.Module):
    """Mixin for top-level models: ``apply`` takes ``edits`` and ``capture``, returns (outputs, acts).

    Subclasses define ``tower_layers()`` (``{tower: number of layers}``) and ``site_names()``.
    Keys and patterns are validated against that table before tracing, so a typo fails with the
    near matches instead of silently editing nothing.
    """

    def tower_layers(self) -> dict[str, int]:
        raise NotImplementedError

    def site_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def check_variables(self, variables) -> None:
        """Refuses variables this model cannot run (a family checks its layer layout here)."""

    def apply(self, variables, *args, edits=None, capture=(), method=None, **kwargs):
        self.check_variables(variables)
        known = self.site_names()
        sites = Sites(validate_edits(edits, known), resolve_capture(capture, known))
        if sites.capture:
            out, state = super().apply(
                variables, *args, sites=sites, method=method, mutable=[COLLECTION], **kwargs
            )
            return out, collect(state.get(COLLECTION, {}))
        return super().apply(variables, *args, sites=sites, method=method, **kwargs), {}
