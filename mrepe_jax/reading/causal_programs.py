"""The compiled and sharded programs that run eq 2's two estimators (``reading.causal``).

Compile once: ``causal_effect`` runs the model with its layers stacked (``Execution(scan_layers=
True)``; per-layer params are stacked on entry), so the patched layer is an array and one
compiled program serves every layer of a sweep. Models without a scanned stack compile one
program per layer.

Models, metrics and site names are static (hashable); arrays are traced, so one compilation per
(model, metric, site, shapes) serves every later sweep. A patch is a named ``where`` mask
(``mrepe_jax.edits``) over the site's position (and head) axes, so the layout of every site kind is
the one ``layouts.site_axes`` gives.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mrepe_jax import edits as edits_lib
from mrepe_jax import parallel
from mrepe_jax import sites as sites_lib
from mrepe_jax.models.layer_stack import stack_layer_params


def position_axis(axes: tuple[str, ...]) -> str:
    """The axis a patch position runs along: tokens, or the query rows of ``attn.logits/pattern``."""
    return "query" if "query" in axes else "token"




def where_masks(axes: tuple[str, ...], num_positions: int, num_heads: int, positions,
                 heads: bool) -> edits_lib.Along:
    """One ``where`` per patch, stacked on a leading axis in (position, head) row-major order: the
    named masks of ``mrepe_jax.edits`` (position, and head with ``heads``), so that the layout of
    every site kind is the one ``layouts.site_axes`` gives."""
    pos_axis = position_axis(axes)
    rows = [edits_lib.axis_mask(pos_axis, num_positions, p) for p in positions]
    if heads:
        rows = [r & edits_lib.head_mask(num_heads, h) for r in rows for h in range(num_heads)]
    return edits_lib.Along(jnp.stack([r.value for r in rows]), rows[0].axes)


def pad_patches(masks: edits_lib.Along, mesh) -> edits_lib.Along:
    """The patches padded (repeating the last) to a multiple of the mesh's ``data`` axis, which
    splits them; the copies' effects are dropped."""
    if mesh is None:
        return masks
    pad = -masks.value.shape[0] % parallel.data_axis_size(mesh)
    return jax.tree.map(lambda m: jnp.concatenate([m, jnp.repeat(m[-1:], pad, axis=0)]), masks)


def per_position(axes: tuple[str, ...], x, heads: bool):
    """Sums ``x`` (activation-shaped) over every axis but batch, position (and head with
    ``heads``): ``[B, T]`` or ``[B, T, H]``."""
    keep = ("batch", position_axis(axes)) + (("head",) if heads else ())
    summed = x.sum(tuple(i for i, a in enumerate(axes) if a not in keep))
    left = [a for a in axes if a in keep]
    return summed.transpose([left.index(a) for a in keep])




@functools.partial(jax.jit, static_argnames=("model", "tower"))
def stage_mask(model, variables, tower, inputs, attention_mask):
    mask, _ = model.apply(variables, tower, inputs, attention_mask, method="layer_mask")
    return mask


@functools.partial(jax.jit, static_argnames=("model", "tower", "capture"))
def forward(model, variables, tower, metric, capture, inputs, attention_mask):
    emb, acts = model.apply(
        variables, tower, inputs, attention_mask, capture=capture, method="encode"
    )
    return metric(emb), acts


def patched_metric(model, variables, tower, point, layer, chunk_size, metric, h, source, masks,
                    stage_mask, input_ids):
    """Metric of the base run with ``point`` of ``layer`` patched by ``source`` under each
    ``masks[k]``: ``[K, B]``.

    ``h`` is the base run's residual entering ``layer``, shared by every patch: only the
    computation downstream of the patched site is batched over the K masks (vmap leaves the
    unpatched part of the layer unbatched). A traced ``layer`` (scanned stacks) makes one program
    serve every layer; a static one (models without a scanned stack) compiles one per layer.
    """

    def one(where):
        patch = edits_lib.Replace(source, where)
        if isinstance(layer, int):  # the layer's own name: a hierarchical tower's block too
            edit = {sites_lib.layer_sites(model.site_names(), tower, point)[layer]: patch}
        else:
            edit = {sites_lib.layer_site(tower, "*", point): edits_lib.AtLayer(layer, patch)}
        out, _ = model.apply(variables, tower, h, start=layer, mask=stage_mask, edits=edit,
                             method="run_layers")
        emb, _ = model.apply(variables, tower, out, inputs=input_ids, method="readout")
        return metric(emb)

    if chunk_size is None or chunk_size >= masks.value.shape[0]:
        return jax.vmap(one)(masks)
    return jax.lax.map(one, masks, batch_size=chunk_size)


STATIC = ("model", "tower", "point", "chunk_size")


def over_patches(mesh):
    """``patched_metric`` with its K patches split over the mesh's ``data`` axis (``shard_map``,
    manual over ``data`` only; the rest replicated over it, and params keep their ``model``
    sharding), or as it is without a mesh."""
    if mesh is None:
        return patched_metric

    def sharded(model, variables, tower, point, layer, chunk_size, metric, h, source, masks,
                stage_mask, input_ids):
        def local(masks):
            return patched_metric(model, variables, tower, point, layer, chunk_size, metric, h,
                                   source, masks, stage_mask, input_ids)

        spec = jax.P(parallel.DATA)
        # check_vma off: the layer stack's lax.cond joins a patched (device-varying) branch with the
        # untouched replicated residual, which the varying-axes type check would reject.
        # Manual over data only: any other axis (model) stays automatic inside, so params sharded
        # over it by a rule table are not all-gathered onto every device (as a fully manual
        # shard_map does with the arrays its body closes over).
        return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False,
                             axis_names=frozenset({parallel.DATA}))(masks)

    return sharded


@functools.lru_cache(maxsize=8)
def sweeps(mesh):
    """(traced-layer program, per-layer program) of the sweep, one pair per mesh."""
    body = over_patches(mesh)
    return (jax.jit(body, static_argnames=STATIC),
            jax.jit(body, static_argnames=STATIC + ("layer",)))


def scanned(model, variables, tower: str):
    """``(model, variables, scanned)``: with every tower's layers stacked, so that the sweep's
    layer is an array (one compiled program for all layers); models without ``execution`` come
    back as they are (``scanned`` False) and sweep with one program per layer, as do towers a
    model cannot run scanned: ``SCAN_SWEEPS = False`` on its class (a stack that cannot run
    scanned, e.g. OPT's) or ``scans(tower)`` False (a hierarchical tower whose blocks change
    shape between stages). A model whose params stack only in part stacks them with its own
    ``stack_params``."""
    execution = getattr(model, "execution", None)
    scans = getattr(model, "scans", lambda _: True)
    if execution is None or not getattr(model, "SCAN_SWEEPS", True) or not scans(tower):
        return model, variables, False
    if execution.scan_layers:
        return model, variables, execution is not None
    stacked = dataclasses.replace(execution, scan_layers=True)
    stack = getattr(model, "stack_params", stack_layer_params)
    return model.clone(execution=stacked), {**variables, "params": stack(variables["params"])}, True


def attribution(model, variables, tower, metric, site_names, axes, heads, base_in, base_mask,
                 src_in, src_mask):
    """Attribution patching in one compiled call: ``[B, L, T(, H)]`` estimates, base/source metric.

    The source run is one forward with capture; the base run is one forward + one backward. The
    gradient w.r.t. a zero ``Add`` delta at a site is the gradient w.r.t. the activation there,
    and only activations (never parameters) are differentiated, so the backward pass costs about
    one forward. Examples do not interact, so the gradient of the batch sum of the metric holds
    every example's own gradient.
    """
    src_emb, src_acts = model.apply(variables, tower, src_in, src_mask, capture=site_names,
                                    method="encode")

    def run(deltas):
        edits = {s: edits_lib.Add(d) for s, d in zip(site_names, deltas)}
        emb, acts = model.apply(variables, tower, base_in, base_mask, edits=edits,
                                capture=site_names, method="encode")
        return metric(emb), acts

    zeros = tuple(jnp.zeros_like(src_acts[s]) for s in site_names)
    base_metric, vjp_fn, base_acts = jax.vjp(run, zeros, has_aux=True)
    (grads,) = vjp_fn(jnp.ones_like(base_metric))
    per_layer = [per_position(axes, (src_acts[s] - base_acts[s]) * g, heads)
                 for s, g in zip(site_names, grads)]
    return jnp.stack(per_layer, 1), base_metric, metric(src_emb)


attribution_jit = jax.jit(attribution,
                           static_argnames=("model", "tower", "site_names", "axes", "heads"))
