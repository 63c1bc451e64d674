"""report.md for the ToyWorld pipeline: one section per stage, tables in the paper's format."""

from __future__ import annotations

from mrepe_jax.report.markdown import section, table

MODALITIES = ("vision", "text", "audio")


def zero_shot_section(results: dict) -> str:
    acc = results["zero_shot"]
    families = list(next(iter(acc.values())))
    rows = [[f] + [acc[m][f] for m in MODALITIES] for f in families]
    rows.append(["minimum"] + [min(acc[m].values()) for m in MODALITIES])
    t = results["training"]
    return section(
        "ToyWorld CLIP: held-out zero-shot accuracy",
        f"Tri-modal CLIP trained {t['steps']} steps (final loss {t['final_loss']}); training took "
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
    parts = [header, zero_shot_section(results)]
    return "\n\n".join(parts) + "\n"
