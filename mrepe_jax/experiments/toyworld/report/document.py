"""report.md for the ToyWorld pipeline: one section per stage, tables in the paper's format."""

from __future__ import annotations

from mrepe_jax.experiments.toyworld.report import align, control, costs, decomposition, features, generative
from mrepe_jax.experiments.toyworld.report.claims import claims_section
from mrepe_jax.report.markdown import fmt, section, table
from mrepe_jax.report.stage_tables import causal_section, table1_section

MODALITIES = ("vision", "text", "audio")
MODEL = "ToyWorld CLIP"
PAIRS = ("ToyWorld contrast pairs: one sample rendered twice, differing only in one family "
         "(its value drawn per pair), every nuisance shared.")


def world_name(world: dict) -> str:
    """"hard" when any of ToyWorld's difficulty knobs is on, else "default"."""
    knobs = (world.get("spurious", 0), world.get("caption_noise", 0), world.get("distractors", 0))
    return "hard" if any(knobs) else "default"


def zero_shot_section(results: dict, world: str = "") -> str:
    acc = results["zero_shot"]
    families = list(next(iter(acc.values())))
    rows = [[f] + [acc[m][f] for m in MODALITIES] for f in families]
    rows.append(["minimum"] + [min(acc[m].values()) for m in MODALITIES])
    t = results["training"]
    return section(
        "ToyWorld CLIP: held-out zero-shot accuracy" + (f" — {world}" if world else ""),
        f"Tri-modal CLIP trained {t['steps']} steps (final loss {fmt(t['final_loss'])}); training took "
        f"{t['trained_in_seconds']} s. Accuracy is the argmax of cosine similarity between each "
        "test sample's embedding and the family's class-prompt embeddings "
        f"({results['config']['eval']['num_test']} test samples).",
        table(["family", "image", "text", "audio"], rows),
    )


def render(results: dict) -> str:
    m = results["machine"]
    header = (
        "# mrepe_jax — ToyWorld report\n\n"
        f"Run on {m['platform']} ({m['cpu_count']} CPUs, devices {', '.join(m['devices'])}), "
        f"jax {m['jax']}, {m['date']}."
    )
    # Plots of a run with the CLIP retrained per seed are the first seed's (``plot_dir``).
    prefix = results.get("plot_dir", "")
    parts = [header, zero_shot_section(results)]
    if "gallery" in results:
        parts.append("Each concept's top- and bottom-scoring test examples (per-patch and per-token heat) and "
                     "steering before and after (labels, captions) are on report.html's concept pages "
                     f"(gallery stage, {results['gallery']['seconds']} s).")
    if "captioner" in results:
        parts.append(generative.captioner_section(results["captioner"]))
    parts += [table1_section(results["identification"], MODEL),
              causal_section(results["causal"], prefix, PAIRS)]
    name = world_name(results["config"]["world"])
    parts += [align.table2(results["alignment"], name),
              align.transfer_table(results["alignment"], name)]
    if "architectures" in results:
        parts.append(generative.architectures_section(results["architectures"]))
    parts += [f"![alignment learning curves]({prefix}align_learning_curves.png)",
              *_control_sections(results, name, prefix)]
    if "hard" in results:
        hard = results["hard"]
        parts += [zero_shot_section({**hard, "config": results["config"]}, "hard world"),
                  table1_section(hard["identification"], MODEL, world="hard world"),
                  align.table2(hard["alignment"], "hard"),
                  align.transfer_table(hard["alignment"], "hard"),
                  *_control_sections(hard, "hard", "hard/" + hard.get("plot_dir", "")),
                  align.hard_comparison(results, hard)]
    return "\n\n".join(parts) + "\n"


def _control_sections(results: dict, name: str, prefix: str) -> list[str]:
    """Tables 3-6 and the Claims of one world (``prefix``: where its plots are, from the report)."""
    captioner = results.get("captioner")
    sae = results.get("features")
    return [control.table3(results["control"], name, captioner, sae),
            f"![steering dose-response, {name} world]({prefix}steering_dose_response.png)",
            control.table4(results["safety"], name, captioner), costs.table5(results, name),
            costs.table6(results, name), claims_section(results, name)] + (
        [features.features_section(sae, name)] if sae is not None else []) + (
        [decomposition.decomposition_section(results["decomposition"], name)] if "decomposition" in results else [])
