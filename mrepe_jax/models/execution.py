"""How a model runs, as opposed to what it computes: options that leave outputs unchanged (within
the parity tolerance) but change compile time, speed and the parameter layout."""

from __future__ import annotations

import dataclasses

ATTENTION = ("auto", "explicit", "fused")


@dataclasses.dataclass(frozen=True)
class Execution:
    """Execution options shared by every tower of a model.

    Attributes:
      scan_layers: store each tower's layers stacked (leaves ``[num_layers, ...]`` at
        ``encoder/layers/...``, see ``layer_stack``) and run them as one ``lax.scan``: the layer is
        compiled once whatever the depth, and a sweep over layers (a traced start layer) is one
        program. Site names do not change. Checkpoints convert as usual; ``stack_layer_params``
        turns converted (per-layer) params into this layout.
      attention: ``"explicit"`` computes attention with its sites (``attn.q`` ... ``attn.z``);
        ``"fused"`` calls ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU) whenever
        no site inside that attention is edited or captured; ``"auto"`` is ``"fused"`` on GPU and
        ``"explicit"`` elsewhere (on CPU, the explicit head-major path measured faster).
    """

    scan_layers: bool = False
    attention: str = "auto"

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"Execution.attention must be one of {ATTENTION}, got {self.attention!r}")
