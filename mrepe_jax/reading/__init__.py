"""Reading: activations at named sites, concept prototypes and directions (eq 1, 6), causal effects
(eq 2: ``causal``, run by the compiled, sharded programs of ``causal_programs``) with bootstrap
confidence intervals, direction bundles."""

from mrepe_jax.reading.activations import collect_activations, stream_statistics, tower_apply
from mrepe_jax.reading.bootstrap import bootstrap_ci
from mrepe_jax.reading.bundles import load_bundle, params_hash, save_bundle
from mrepe_jax.reading.causal import CausalEffects, attribution_effect, causal_effect
from mrepe_jax.reading.directions import calibrate_sign, direction_mean_diff, direction_pca, direction_probe
from mrepe_jax.reading.prototypes import (
                                          auroc,
                                          concept_members,
                                          fit_threshold,
                                          identification_score,
                                          prototype,
                                          similarity,
)

__all__ = [
    "CausalEffects", "attribution_effect", "auroc", "bootstrap_ci", "calibrate_sign",
    "causal_effect", "collect_activations", "concept_members", "direction_mean_diff",
    "direction_pca", "direction_probe", "fit_threshold", "identification_score", "load_bundle",
    "params_hash", "prototype", "save_bundle", "similarity", "stream_statistics", "tower_apply",
]
