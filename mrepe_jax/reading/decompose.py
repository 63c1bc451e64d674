"""A tower's embedding as a sum of per-layer, per-head, per-token terms (TextSpan's decomposition).

Gandelsman, Efros & Steinhardt, "Interpreting CLIP's Image Representation via Text-Based
Decomposition" (ICLR 2024; code: github.com/yossigandelsman/clip_text_span, ``prs_hook.py``).
A pre-LN ViT's readout token (CLS) leaves the last layer as the residual sum

    r = e + sum_l MLP_l + sum_l sum_h sum_t a_{l,h,t}

(the paper's §3.1 layer decomposition, its eq. 2, refined over heads and image tokens as in its
eq. 3 and §4-5): ``e`` the embedding entering layer 0 (after CLIP's ``pre_layrnorm``), ``MLP_l``
layer ``l``'s MLP output, and ``a_{l,h,t} = A^{l,h}[cls, t] * v^{l,h}_t W_O^{l,h}`` (the paper's
``alpha_t^{l,h} W_VO^{l,h} z_t^{l-1}``) the contribution of head ``h`` reading source token ``t``.
The embedding is ``P LN(r)`` (eq. 1); with LN's mean ``mu`` and std ``sigma``
computed on the real ``r`` and held fixed, ``LN`` is affine in ``r`` and every term goes through

    c -> ((c - mean_features(c)) / sigma) * gamma,  then the projection ``P``,

so the terms, projected, sum to the embedding exactly (up to float rounding). Two choices:

- LN's ``beta`` goes to the **embedding term** ``embed`` (with a chain of LNs, each ``beta``
  carried through the LNs after it, as a constant). TextSpan instead splits ``beta`` and ``mu`` evenly over every term
  (``PRSLogger._normalize_*``: each term minus ``mu / #terms`` plus ``beta / #terms``); we centre
  each term on its own feature mean, which is the linear part of LN applied to that term, so a
  term does not change when another one does.
- The attention out-projection bias ``b_O`` is spread **as TextSpan does**
  (``PRSLogger.compute_attentions_spatial``): ``b_O / (T * H)`` is added to every (head, source
  token) term of its layer, regardless of the attention weights, so the head terms of a layer sum
  to its ``attn_out``.

Everything comes from captured sites (``layers.0.resid_pre``, ``layers.*.mlp_out``,
``layers.*.attn.pattern``, ``layers.*.attn.v``, the last ``resid_post`` for LN's statistics) and
the weights ``W_O``, ``b_O``, ``gamma``, ``beta``, ``P`` (``Readout``). Only the readout row of each
pattern is read, so no ``[T, T, H, D]`` tensor (every query's per-source terms) is ever formed:
memory is linear in T, per example O(L * H * T * D') -- the output, which the layer scan builds
layer-major and then lays out batch-major (measured: temp ~1.75x the output), one layer's
``[H, T, D']`` slab at a time; a layer's slab is 1/L of the output, so tokens need no chunking.
The LN-and-projection map is folded into ``W_O`` once, ``W_O^{l,h} C diag(gamma) P`` (``C`` the
centring), so each layer's terms are one ``[T, H, Dh] x [H, Dh, D']`` contraction.

Towers: ``ContrastiveTowers`` (CLIP, the ToyWorld tri-modal CLIP; ``readout="proj"``: the
projected embedding, ``"pooled"``: ``post_layernorm`` of CLS) and BLIP-2's EVA ViT
(``Blip2VisionModel``; ``readout="cls"``: the CLS row of ``last_hidden_state`` =
``post_layernorm(r_cls)``, what the Q-Former reads at CLS; ``"pooled"``: ``pooler_output``, the same
LN applied twice, linearised as a chain with each LN's statistics taken on its real input).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mrepe_jax import parallel
from mrepe_jax.models.blip2.vision import Blip2VisionModel
from mrepe_jax.models.clip.model import ContrastiveTowers
from mrepe_jax.models.layer_stack import LAYERS

Array = Any
# The terms must sum back to the embedding at 1e-5: no TF32 / bf16 passes in these contractions.
PRECISION = jax.lax.Precision.HIGHEST


@struct.dataclass
class Readout:
    """The weights between the residual stream and the embedding.

    ``out_kernel [L, H, Dh, D]``, ``out_bias [L, D]``: each layer's attention out-projection, split
    by head; ``scales``/``biases``: the final LayerNorm(s), applied in order (``[D]`` each);
    ``proj [D, D']`` or None (no projection: ``D' = D``); ``eps``: the LayerNorms' epsilon."""

    out_kernel: Array
    out_bias: Array
    scales: tuple
    biases: tuple
    proj: Array | None
    eps: float = struct.field(pytree_node=False)


@struct.dataclass
class Decomposition:
    """Terms of ``N`` embeddings (``D'`` wide), which sum to ``target`` (``total()``).

    ``embed [N, D']``: the embedding term (with every LN ``beta``); ``mlp [N, L, D']``;
    ``attn [N, L, H, T, D']``: head ``h`` of layer ``l`` reading source token ``t`` (with its share
    ``b_O / (T H)`` of the out-projection bias); ``target [N, D']``: the model's own embedding;
    ``mean``, ``std [N, K]``: the K final LayerNorms' statistics, held fixed (the linearisation);
    ``index [N]``: the readout token whose residual is decomposed."""

    embed: Array
    mlp: Array
    attn: Array
    target: Array
    mean: Array
    std: Array
    index: Array

    def total(self):
        """The sum of every term, ``[N, D']``: equals ``target`` up to rounding."""
        return self.embed + self.mlp.sum(1) + self.attn.sum((1, 2, 3))

    def heads(self):
        """Per-head terms summed over source tokens, ``[N, L, H, D']`` (TextSpan's
        ``head_no_spatial`` outputs: what ``textspan.text_span`` explains)."""
        return self.attn.sum(3)


def folded_map(readout: Readout):
    """The linear part of the final LN(s) and the projection, ``C diag(gamma_1) ... C diag(gamma_K)
    P`` (``[D, D']``; ``C`` removes the feature mean): what a term ``c`` becomes, times
    ``1 / prod_k sigma_k`` of its example."""
    d = readout.out_bias.shape[-1]
    m = jnp.eye(d, dtype=readout.out_bias.dtype)
    for g in readout.scales:
        m = (m - m.mean(-1, keepdims=True)) * g
    return m if readout.proj is None else jnp.matmul(m, readout.proj, precision=PRECISION)


def _constant(readout: Readout, std):
    """Every LN's ``beta``, carried through the LNs after it and the projection: ``[D']``."""
    c = jnp.zeros_like(readout.out_bias[0])
    for g, b, s in zip(readout.scales, readout.biases, std):
        c = (c - c.mean()) * g / s + b
    return c if readout.proj is None else jnp.matmul(c, readout.proj, precision=PRECISION)


def _stats(readout: Readout, resid):
    """The final LNs' (mean, std) on the real residual ``[D]``: ``([K], [K])``."""
    means, stds, x = [], [], resid
    for g, b in zip(readout.scales, readout.biases):
        mu = x.mean()
        sigma = jnp.sqrt(((x - mu) ** 2).mean() + readout.eps)
        means.append(mu)
        stds.append(sigma)
        x = (x - mu) / sigma * g + b
    return jnp.stack(means), jnp.stack(stds)


def decompose_example(readout: Readout, embed, mlp_out, rows, v, resid):
    """One example's terms (no batch axis; ``jax.vmap`` it over examples).

    ``embed [D]``: the readout token entering layer 0; ``mlp_out [L, D]``: its MLP outputs;
    ``rows [L, H, T]``: the readout token's attention pattern rows; ``v [L, T, H, Dh]``: the values;
    ``resid [D]``: the readout token's real final residual (LN statistics). Returns
    ``(embed [D'], mlp [L, D'], attn [L, H, T, D'], mean [K], std [K])``."""
    mean, std = _stats(readout, resid)
    inv = 1.0 / jnp.prod(std)
    m = folded_map(readout)
    ov = jnp.einsum("lhkd,de->lhke", readout.out_kernel, m, precision=PRECISION)
    num_heads, num_tokens = rows.shape[1:]
    bias = jnp.matmul(readout.out_bias, m, precision=PRECISION) * (inv / (num_tokens * num_heads))

    def layer(xs):  # one layer at a time: the scan holds one [H, T, D'] slab beside the output
        row, vl, ovl, bl = xs
        vo = jnp.einsum("thk,hke->hte", vl, ovl, precision=PRECISION)
        return row[..., None] * vo * inv + bl

    attn = jax.lax.map(layer, (rows, v, ov, bias))
    embed_term = jnp.matmul(embed, m, precision=PRECISION) * inv + _constant(readout, std)
    mlp = jnp.matmul(mlp_out, m, precision=PRECISION) * inv
    return embed_term, mlp, attn, mean, std


def capture_patterns(tower: str, num_layers: int) -> tuple[str, ...]:
    """The sites ``decompose_acts`` reads."""
    return (f"{tower}.layers.0.resid_pre", f"{tower}.layers.*.mlp_out",
            f"{tower}.layers.*.attn.pattern", f"{tower}.layers.*.attn.v",
            f"{tower}.layers.{num_layers - 1}.resid_post")


def decompose_acts(acts, readout: Readout, tower: str, index=None):
    """The terms from captured sites ``acts`` (``capture_patterns``; batch first): ``(embed, mlp,
    attn, mean, std)`` with a leading ``[N]`` axis. ``index [N]``: the readout token (default 0,
    the CLS token). Only each pattern's readout row is sliced out, before anything is stacked."""
    num_layers = readout.out_kernel.shape[0]
    first = acts[f"{tower}.layers.0.resid_pre"]
    index = jnp.zeros(first.shape[:1], jnp.int32) if index is None else index

    def at(x, axis=1):  # [N, .., T, ...] -> the readout token's row, without the token axis
        idx = index.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.take(jnp.take_along_axis(x, idx, axis=axis), 0, axis=axis)

    site = functools.partial("{}.layers.{}.{}".format, tower)
    mlp_out = jnp.stack([at(acts[site(i, "mlp_out")]) for i in range(num_layers)], 1)
    # pattern [N, H, Tq, Tk]: the readout query's row, [N, H, Tk], per layer
    rows = jnp.stack([at(acts[site(i, "attn.pattern")], 2) for i in range(num_layers)], 1)
    v = jnp.stack([acts[site(i, "attn.v")] for i in range(num_layers)], 1)
    resid = at(acts[site(num_layers - 1, "resid_post")])
    one = functools.partial(decompose_example, readout)
    return jax.vmap(one)(at(first), mlp_out, rows, v, resid)


def _layer_stack(encoder, *path):
    """``encoder/layers/{i}/<path>`` stacked over layers, or the already stacked leaf."""
    layers = encoder[LAYERS]
    if "0" in layers:
        leaves = [layers[str(i)] for i in range(len(layers))]
        for key in path:
            leaves = [x[key] for x in leaves]
        return jnp.stack(leaves)
    for key in path:
        layers = layers[key]
    return jnp.asarray(layers)


def readout_weights(model, variables, tower: str = "vision", readout: str = "proj") -> Readout:
    """``Readout`` of a ``ContrastiveTowers`` model's tower (``readout`` ``"proj"`` or ``"pooled"``)
    or of a ``Blip2VisionModel`` (``"cls"`` or ``"pooled"``, see the module docstring)."""
    params = variables["params"]
    if isinstance(model, Blip2VisionModel):
        if readout not in ("cls", "pooled"):
            raise ValueError(f"BLIP-2's vision tower reads out 'cls' or 'pooled', not {readout!r}")
        config, enc, norm, proj, attn_out = model.config, params, "post_layernorm", None, "projection"
        repeat = 2 if readout == "pooled" else 1
    elif isinstance(model, ContrastiveTowers):
        if readout not in ("proj", "pooled"):
            raise ValueError(f"a contrastive tower reads out 'proj' or 'pooled', not {readout!r}")
        towers = model.bind(variables).tower_modules()
        if tower not in towers:
            raise ValueError(f"unknown tower {tower!r}; this model has {sorted(towers)}")
        enc_mod, proj_mod = towers[tower]
        config, enc = enc_mod.config, params[enc_mod.name]
        norm = "post_layernorm" if "post_layernorm" in enc else "final_layer_norm"
        proj = params[proj_mod.name]["kernel"] if readout == "proj" else None
        attn_out, repeat = "out_proj", 1
    else:
        raise TypeError(f"no decomposition for a {type(model).__name__}: it takes a "
                        "ContrastiveTowers model (CLIP, the ToyWorld CLIP) or a Blip2VisionModel")
    heads = config.num_attention_heads
    kernel = _layer_stack(enc["encoder"], "self_attn", attn_out, "kernel")
    num_layers, d = kernel.shape[:2]
    return Readout(kernel.reshape(num_layers, heads, d // heads, -1),
                   _layer_stack(enc["encoder"], "self_attn", attn_out, "bias"),
                   (enc[norm]["scale"],) * repeat, (enc[norm]["bias"],) * repeat, proj,
                   config.layer_norm_eps)


def _forward(model, variables, tower, readout, inputs, capture):
    """``(target [N, D'], acts)``: the embedding as the model computes it, and the captures."""
    if isinstance(model, Blip2VisionModel):
        out, acts = model.apply(variables, inputs, capture=capture)
        return (out["last_hidden_state"][:, 0] if readout == "cls" else out["pooler_output"]), acts
    capture = capture + ((f"{tower}.pooled",) if readout == "pooled" else ())
    emb, acts = model.apply(variables, tower, inputs, method="encode", capture=capture)
    return (emb if readout == "proj" else acts[f"{tower}.pooled"]), acts


def _program(model, variables, inputs, *, tower, readout):
    weights = readout_weights(model, variables, tower, readout)
    capture = capture_patterns(tower, weights.out_kernel.shape[0])
    target, acts = _forward(model, variables, tower, readout, inputs, capture)
    embed, mlp, attn, mean, std = decompose_acts(acts, weights, tower)
    index = jnp.zeros(target.shape[:1], jnp.int32)
    return Decomposition(embed, mlp, attn, target, mean, std, index)


@functools.lru_cache(maxsize=8)
def _compiled(mesh):
    static = ("model", "tower", "readout")
    if mesh is None:
        return jax.jit(_program, static_argnames=static)
    return jax.jit(_program, static_argnames=static, out_shardings=parallel.data_sharding(mesh))


def decompose(model, variables, inputs, tower: str = "vision", readout: str | None = None,
              mesh=None) -> Decomposition:
    """The forward pass with capture and the decomposition of its readout token, in one compiled
    program (``Decomposition``; every field batch-first).

    ``model``: a ``ContrastiveTowers`` model (``tower`` ``vision`` or ``audio``; ``readout``
    ``"proj"``, the default, or ``"pooled"``) or a ``Blip2VisionModel`` (``"cls"``, the default, or
    ``"pooled"``). ``inputs``: the tower's input batch (NHWC pixels, or audio). ``mesh``: examples
    split over its ``data`` axis (padded to a multiple of it, padding dropped from the result);
    params already laid out over the mesh stay so, the rest is replicated."""
    if tower == "text":
        raise ValueError("decompose reads out token 0 (vision, audio); the text tower pools at "
                         "each example's EOS: capture capture_patterns('text', L) and call "
                         "decompose_acts(acts, readout_weights(...), 'text', index=eos_positions)")
    if readout is None:
        readout = "cls" if isinstance(model, Blip2VisionModel) else "proj"
    run = functools.partial(_compiled(mesh), model, tower=tower, readout=readout)
    if mesh is None:
        return run(variables, inputs)
    n = parallel.batch_size(inputs)
    size = -(-n // parallel.data_axis_size(mesh)) * parallel.data_axis_size(mesh)
    padded, _ = parallel.pad_batch(np.asarray(inputs), size)
    out = run(parallel.keep_or_replicate(variables, mesh), parallel.shard_batch(padded, mesh))
    return jax.tree.map(lambda x: x[:n], out)
