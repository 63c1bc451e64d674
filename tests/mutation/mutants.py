"""The mutation check's list: one-line bugs in the functions behind the paper's eq 1-11 (DESIGN.md §4)
and in the edit machinery (``edits.py``, ``sites.py``), each with the tests of its module.

A mutant replaces ``before`` (which must occur exactly once in ``path``, else the harness stops and
names the file: a list that no longer matches the code fails loudly instead of rotting) with
``after``, then runs ``tests`` against the mutated copy; a failing test kills it. ``tests/mutation/
harness.py`` runs them; ``tests/test_mutation_check.py`` (slow) asserts that every one is killed.

``sanity`` marks mutants that prove the harness runs the mutated copy (not the editable install of
the real tree): a bug no test of its module could miss.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    before: str  # exact text, occurring once in ``path``
    after: str
    breaks: str  # the equation and what the bug does
    tests: tuple[str, ...]  # the tests of the mutated module
    sanity: bool = False


PROTOTYPES = ("tests/reading/test_prototypes.py",)
CAUSAL = ("tests/reading/test_causal.py",)
CONTRASTIVE = ("tests/train/test_contrastive.py",)
MAPS = ("tests/align/test_maps.py",)
DIRECTIONS = ("tests/reading/test_directions.py",)
INTERVENTIONS = ("tests/control/test_interventions.py",)
EVALUATE = ("tests/control/test_evaluate.py",)
CMC = ("tests/metrics/test_cmc.py",)
SAFETY = ("tests/metrics/test_safety.py",)
STATS = ("tests/metrics/test_stats.py", "tests/metrics/test_safety.py")
BOOTSTRAP = ("tests/reading/test_bootstrap.py",)
EDITS = ("tests/test_edits.py",)
ATTN_BIAS = ("tests/test_edits.py", "tests/control/test_interventions.py")
SITES = ("tests/models/test_layer_stack.py", "tests/test_sites.py", "tests/test_edits.py")

MUTANTS: tuple[Mutant, ...] = (
    # ---- eq 1: prototype membership and its threshold (reading/prototypes) ----
    Mutant(
        "eq1_members_non_strict", "mrepe_jax/reading/prototypes.py",
        "    return similarity(r, proto) > tau\n",
        "    return similarity(r, proto) >= tau\n",
        "eq 1: R_c = {r : sim > tau} becomes sim >= tau (a member at the threshold)",
        PROTOTYPES, sanity=True),
    Mutant(
        "eq1_threshold_ties_to_largest_tau", "mrepe_jax/reading/prototypes.py",
        "    return taus[np.argmax(_score(tp, fp, len(sim_pos), len(sim_neg), criterion))]\n",
        "    return taus[::-1][np.argmax(_score(tp, fp, len(sim_pos), len(sim_neg), criterion)[::-1])]\n",
        "eq 1 tau_c: fit_threshold breaks ties toward the largest tau, not the smallest its docstring "
        "promises (issue 29, survived before)",
        PROTOTYPES),
    Mutant(
        "eq1_auroc_ties_count_one", "mrepe_jax/reading/prototypes.py",
        "    return xp.mean((below + 0.5 * equal) / neg.size)\n",
        "    return xp.mean((below + equal) / neg.size)\n",
        "Table 1 identification AUROC: a tie counts 1 instead of 1/2",
        PROTOTYPES),
    # ---- eq 2: causal effects (reading/causal, reading/causal_programs) ----
    Mutant(
        "eq2_exact_effect_sign", "mrepe_jax/reading/causal.py",
        "        per_layer.append(patched[:k] - base_metric)  # [K, B]\n",
        "        per_layer.append(base_metric - patched[:k])  # [K, B]\n",
        "eq 2: CE = E[y | do(r')] - E[y | do(r0)] with the sign flipped (exact patching)",
        CAUSAL),
    Mutant(
        "eq2_attribution_difference_sign", "mrepe_jax/reading/causal_programs.py",
        "    per_layer = [per_position(axes, (src_acts[s] - base_acts[s]) * g, heads)\n",
        "    per_layer = [per_position(axes, (base_acts[s] - src_acts[s]) * g, heads)\n",
        "eq 2 by attribution: (r0 - r') . grad instead of (r' - r0) . grad",
        CAUSAL),
    # ---- eq 3: InfoNCE (train/contrastive) ----
    Mutant(
        "eq3_temperature_dropped", "mrepe_jax/train/contrastive.py",
        "    logits = anchors @ candidates.T / temperature\n",
        "    logits = anchors @ candidates.T\n",
        "eq 3: the 1/tau of the logits dropped",
        CONTRASTIVE),
    Mutant(
        "eq3_symmetric_term_same_direction", "mrepe_jax/train/contrastive.py",
        "        loss = 0.5 * (loss + jnp.mean(_terms(t, s, rows, temperature, None)))\n",
        "        loss = 0.5 * (loss + jnp.mean(_terms(s, t, rows, temperature, None)))\n",
        "eq 3 symmetric (CLIP) form: the tgt->src term computed src->tgt again",
        CONTRASTIVE),
    Mutant(
        "eq3_negatives_not_normalized", "mrepe_jax/train/contrastive.py",
        "        candidates = jnp.concatenate([candidates, normalize(negatives)], axis=0)\n",
        "        candidates = jnp.concatenate([candidates, negatives], axis=0)\n",
        "eq 3: memory negatives enter with their raw dot product, not the cosine sim",
        CONTRASTIVE),
    # ---- eq 4: the alignment map (align/maps) ----
    Mutant(
        "eq4_gate_added_not_multiplied", "mrepe_jax/align/maps.py",
        "        return _mlp(code * (weights @ v), self.hidden, self.target_dim, \"mlp_j\")\n",
        "        return _mlp(code + (weights @ v), self.hidden, self.target_dim, \"mlp_j\")\n",
        "eq 4: MLP_i(r) + attention(r, anchors) instead of the element-wise product",
        MAPS),
    Mutant(
        "eq4_attention_unscaled", "mrepe_jax/align/maps.py",
        "        weights = jax.nn.softmax(q @ k.T / jnp.sqrt(self.hidden).astype(q.dtype), axis=-1)\n",
        "        weights = jax.nn.softmax(q @ k.T, axis=-1)\n",
        "eq 4: the anchor attention loses its 1/sqrt(d) scaling",
        MAPS),
    # ---- eq 5 / 6: directions and the direct intervention ----
    Mutant(
        "eq6_mean_diff_sign", "mrepe_jax/reading/directions.py",
        "    delta = (pos.mean(0, dtype=np.float64) - neg.mean(0, dtype=np.float64)).astype(np.float32)\n",
        "    delta = (neg.mean(0, dtype=np.float64) - pos.mean(0, dtype=np.float64)).astype(np.float32)\n",
        "eq 6: Delta_c = mean(S-) - mean(S+), the direction points away from the concept",
        DIRECTIONS),
    Mutant(
        "eq6_unit_not_normalized", "mrepe_jax/reading/directions.py",
        "    return v / norm\n",
        "    return v\n",
        "eq 6: unit() returns the raw vector, so directions are not unit-norm",
        DIRECTIONS),
    Mutant(
        "eq5_direct_direction_not_unit", "mrepe_jax/control/interventions.py",
        "    unit = d / jnp.maximum(jnp.linalg.norm(d), 1e-12)\n",
        "    unit = d\n",
        "eq 5: direct() adds alpha * scale * Delta without normalising Delta",
        INTERVENTIONS),
    Mutant(
        "eq5_direct_scale_dropped", "mrepe_jax/control/interventions.py",
        "    return {site: Add(unit * scale, alpha, where)}\n",
        "    return {site: Add(unit, alpha, where)}\n",
        "eq 5: alpha no longer relative to the site's scale",
        INTERVENTIONS),
    Mutant(
        "eq5_site_scale_wrong_axis", "mrepe_jax/control/interventions.py",
        "    norms = np.linalg.norm(reps, axis=-1)\n",
        "    norms = np.linalg.norm(reps, axis=0)\n",
        "eq 5's unit: site_scale takes the norm over examples, not features (issue 29 item 1: the "
        "test built its expectation from site_scale itself)",
        INTERVENTIONS),
    Mutant(
        "eq5_sweep_ignores_the_intervention", "mrepe_jax/control/evaluate.py",
        "        emb, _ = model.apply(variables, tower, inputs, mask, edits=edits_fn(p), method=\"encode\")\n",
        "        emb, _ = model.apply(variables, tower, inputs, mask, edits=None, method=\"encode\")\n",
        "Table 3 sweep: _predict runs every intervention as the clean model (issue 29, survived its "
        "vision test)",
        EVALUATE),
    # ---- eq 7: the attention-logit bias ----
    Mutant(
        "eq7_attn_bias_subtracted", "mrepe_jax/edits.py",
        "        return select(self.where, x + resolve(self.mask, x, site, \"AttnBias.mask\"), x, site)\n",
        "        return select(self.where, x - resolve(self.mask, x, site, \"AttnBias.mask\"), x, site)\n",
        "eq 7: M_c subtracted from the logits (boost becomes suppression)",
        ATTN_BIAS),
    Mutant(
        "eq7_bias_after_the_scaling", "mrepe_jax/models/attention.py",
        "    logits = tap(f\"{block}.logits\", jnp.matmul(qh, kh.swapaxes(-1, -2)))\n"
        "    scores = logits * (qh.shape[-1] ** -0.5)\n",
        "    logits = jnp.matmul(qh, kh.swapaxes(-1, -2))\n"
        "    scores = tap(f\"{block}.logits\", logits * (qh.shape[-1] ** -0.5))\n",
        "eq 7: the attn.logits site (where M_c is added) moved after the 1/sqrt(d_k) scaling",
        ATTN_BIAS),
    # ---- eq 8: CMC ----
    Mutant(
        "eq8_jsd_in_nats", "mrepe_jax/metrics/cmc.py",
        "    return jnp.where(p > 0, p * (jnp.log2(safe) - jnp.log2(jnp.where(p > 0, m, 1.0))), 0.0)\n",
        "    return jnp.where(p > 0, p * (jnp.log(safe) - jnp.log(jnp.where(p > 0, m, 1.0))), 0.0)\n",
        "eq 8: JSD in nats (log) instead of bits (log2)",
        CMC),
    Mutant(
        "eq8_logit_scale_dropped", "mrepe_jax/metrics/cmc.py",
        "    return jax.nn.softmax(logit_scale * normalize(embeddings) @ normalize(prompts).T, axis=-1)\n",
        "    return jax.nn.softmax(normalize(embeddings) @ normalize(prompts).T, axis=-1)\n",
        "eq 8's f(x): zero-shot softmax without the model's logit_scale",
        CMC),
    # ---- eq 9-11: VAS, SCR, AR and PGD ----
    Mutant(
        "eq9_vas_pooled_over_inputs", "mrepe_jax/metrics/safety.py",
        "        means.append(s.mean())\n",
        "        means.extend(s)\n",
        "eq 9: mean over all inputs instead of 1/|V| sum over values of per-value means",
        SAFETY),
    Mutant(
        "eq10_scr_over_all_inputs", "mrepe_jax/metrics/safety.py",
        "    return float(np.mean(safe[pred[unsafe]]))\n",
        "    return float(np.mean(safe[pred]))\n",
        "eq 10: the safe-output rate over every input, not X_unsafe",
        SAFETY),
    Mutant(
        "eq11_ar_counts_changes", "mrepe_jax/metrics/safety.py",
        "    return float(np.mean(a == b))\n",
        "    return float(np.mean(a != b))\n",
        "eq 11: E[I(f(x) != f(x + delta))], the attack success rate instead of the robustness",
        SAFETY),
    Mutant(
        "eq11_pgd_step_descends", "mrepe_jax/metrics/safety.py",
        "        z = project(z + step_size * jnp.sign(grad(z)))\n",
        "        z = project(z - step_size * jnp.sign(grad(z)))\n",
        "eq 11's attack: PGD steps down the loss",
        SAFETY),
    Mutant(
        "eq11_pgd_ball_too_wide", "mrepe_jax/metrics/safety.py",
        "        z = jnp.clip(z, x - epsilon, x + epsilon)\n",
        "        z = jnp.clip(z, x - 2 * epsilon, x + 2 * epsilon)\n",
        "eq 11's attack: the projection onto the eps-ball uses radius 2 eps",
        SAFETY),
    # ---- significance and confidence intervals ----
    Mutant(
        "stats_permutation_drops_plus_one", "mrepe_jax/metrics/stats.py",
        "    return float((1 + extreme) / (1 + num_permutations))\n",
        "    return float(extreme / num_permutations)\n",
        "paired permutation test: (1 + #extreme) / (1 + n) loses its +1s, so p can be 0 (issue 29, "
        "survived before)",
        STATS),
    Mutant(
        "bootstrap_percentiles_one_sided_alpha", "mrepe_jax/reading/bootstrap.py",
        "    return quantile(alpha / 2), quantile(1 - alpha / 2)\n",
        "    return quantile(alpha), quantile(1 - alpha)\n",
        "bootstrap CI: the alpha and 1 - alpha percentiles (a 90% interval for alpha = 0.05)",
        BOOTSTRAP),
    # ---- the edit machinery (edits.py) ----
    Mutant(
        "edits_where_swapped", "mrepe_jax/edits.py",
        "    return jnp.where(resolve(where, old, site, \"where\"), new, old)\n",
        "    return jnp.where(resolve(where, old, site, \"where\"), old, new)\n",
        "every edit (Replace's do() of eq 2 included) applies to the positions its where excludes",
        EDITS, sanity=True),
    Mutant(
        "edits_add_alpha_dropped", "mrepe_jax/edits.py",
        "        return select(self.where, x + alpha * delta, x, site)\n",
        "        return select(self.where, x + delta, x, site)\n",
        "eq 5's Add: r + Delta, alpha ignored",
        EDITS),
    Mutant(
        "edits_ablate_where_dropped", "mrepe_jax/edits.py",
        "        return select(self.where, jnp.broadcast_to(mean, x.shape), x, site)\n",
        "        return select(None, jnp.broadcast_to(mean, x.shape), x, site)\n",
        "Ablate: the whole activation is ablated, whatever its where",
        EDITS),
    # ---- the site machinery (sites.py) ----
    Mutant(
        "sites_traced_edit_at_the_next_layer", "mrepe_jax/sites.py",
        "                x = jnp.where(index == layer, edited, x)\n",
        "                x = jnp.where(index == layer + 1, edited, x)\n",
        "a scanned stack applies layer L's edit at layer L + 1",
        SITES),
    Mutant(
        "sites_at_layer_wildcard_off_by_one", "mrepe_jax/sites.py",
        "            x = jnp.where(index == e.layer, edits_lib.apply_edits(e.edit, x, wildcard), x)\n",
        "            x = jnp.where(index == e.layer - 1, edits_lib.apply_edits(e.edit, x, wildcard), x)\n",
        "AtLayer(L, edit) applies at layer L - 1 (layer sweeps of eq 2 patch the wrong layer)",
        SITES),
    Mutant(
        "sites_stacked_capture_wrong_layer", "mrepe_jax/sites.py",
        "                out[concrete] = value[j]\n",
        "                out[concrete] = value[-1]\n",
        "a scanned stack's captures: every layer's name holds the last layer's value",
        SITES),
)
