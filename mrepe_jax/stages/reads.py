"""A tower's sites read over a batch dict, for the stages of every experiment.

- ``token_reps``: every token; ``mean_reps``: the mean over real tokens (what identification
  reads); ``readout_reps``: the token the tower's readout pools (CLS for vision and audio, EOS for
  text), whose last-layer residual is all that reaches the embedding; ``readout_mask``: that token
  as an edit's ``where``.

``keys`` names a tower's inputs in the batch: ``(input_key, mask_key)``, ``mask_key`` None for
towers without a padding mask (ToyWorld's are ``("image", None)``, ``("input_ids",
"attention_mask")`` and ``("audio", None)``). Every reader goes through ``collect_activations``'
cached step, so every stage (and every world) that reads one tower and site shares one program.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.edits import Along, along
from mrepe_jax.reading.activations import collect_activations, tower_apply


def every_token(x, _mask):
    """A ``collect_activations`` reduction that keeps every token (module level: one program)."""
    return x


def _inputs(batch: dict, keys: tuple[str, str | None]) -> list[str]:
    input_key, mask_key = keys
    return [input_key] + ([mask_key] if mask_key else [])


def token_reps(model, params, tower: str, keys: tuple[str, str | None], batch: dict,
               site: str) -> np.ndarray:
    """``site`` per token, ``[N, T, D]``, for the rows of ``batch`` (one batch, no chunking)."""
    input_key, mask_key = keys
    return collect_activations(tower_apply(model, tower, input_key, mask_key),
                               [{k: batch[k] for k in _inputs(batch, keys)}], (site,),
                               params={"params": params}, reduce=every_token, mask_key=mask_key)[site]


def mean_reps(model, params, tower: str, keys: tuple[str, str | None], batch: dict,
              sites: Sequence[str], chunk: int = 256, mesh=None,
              gather: bool = False) -> dict[str, np.ndarray]:
    """``{site: [N, D]}``: each site's mean over real tokens, read in chunks of ``chunk`` rows
    (the last one padded, so one program serves every chunk).

    ``batch`` holds this process's rows; with ``gather`` every process gets every row, in order
    (``parallel.gather_rows``)."""
    input_key, mask_key = keys
    names = _inputs(batch, keys)
    n = len(batch[input_key])
    batches = ({k: batch[k][s:s + chunk] for k in names} for s in range(0, n, chunk))
    local = collect_activations(tower_apply(model, tower, input_key, mask_key), batches, tuple(sites),
                                params={"params": params}, reduce="mean", mask_key=mask_key, mesh=mesh)
    return parallel.gather_rows(local) if gather else local


@functools.partial(jax.jit, static_argnames=("model", "tower"))
def _readout_index(model, params, tower, inputs):
    index, _ = model.apply({"params": params}, tower, inputs, method="readout_index")
    return index


def readout_index(model, params, tower: str, inputs) -> np.ndarray:
    """``[N]``: the position each input's readout pools (``ContrastiveTowers.readout_index``)."""
    return np.asarray(_readout_index(model, params, tower, inputs))


def readout_reps(model, params, tower: str, keys: tuple[str, str | None], batch: dict, site: str,
                 chunk: int = 256, gather: bool = False) -> np.ndarray:
    """``site`` at each row's readout token (the token mean for a tower that ``pools_mean``),
    ``[N, D]``, read in chunks of ``chunk`` rows as ``mean_reps`` (with ``gather``: every
    process's rows)."""
    input_key, mask_key = keys
    names = _inputs(batch, keys)
    n = len(batch[input_key])
    batches = ({k: batch[k][s:s + chunk] for k in names} for s in range(0, n, chunk))
    tokens = collect_activations(tower_apply(model, tower, input_key, mask_key), batches, (site,),
                                 params={"params": params}, reduce=every_token, mask_key=mask_key)[site]
    if pools_mean(model, tower):
        local = tokens.mean(1)
    else:
        local = tokens[np.arange(n), readout_index(model, params, tower, batch[input_key])]
    return parallel.gather_rows(local) if gather else local


def readout_mask(model, params, tower: str, inputs, site: str | None = None) -> Along:
    """The readout token of each input as an edit's ``where`` at the tower's residual sites: a
    ``[N, T]`` mask named ``(batch, token)``, so ``Replace(value, readout_mask(...))`` patches only
    what the readout reads; every token for a tower that pools their mean (``pools_mean``). ``T``:
    the tokens at ``site`` (default: the embedding's, which every layer of a plain tower keeps; a
    hierarchical tower's stages have fewer). Only shapes are computed: nothing runs."""
    if site is None:
        h, _ = jax.eval_shape(lambda p, x: model.apply({"params": p}, tower, x, method="embed"), params, inputs)
    else:
        _, acts = jax.eval_shape(lambda p, x: model.apply({"params": p}, tower, x, capture=(site,),
                                                          method="encode"), params, inputs)
        h = acts[site]
    if pools_mean(model, tower):
        return along(np.ones((len(inputs), h.shape[1]), bool), "batch", "token")
    index = readout_index(model, params, tower, inputs)
    return along(np.arange(h.shape[1])[None] == index[:, None], "batch", "token")


def pools_mean(model, tower: str) -> bool:
    """Whether ``tower``'s readout pools the mean of its final tokens (CLAP's audio tower) instead
    of reading one token: its readout "token" is then every token, and a readout representation
    their mean."""
    return bool(getattr(model, "pools_mean", lambda _: False)(tower))
