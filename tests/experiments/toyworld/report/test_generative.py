"""The transferability table's verdict line: ties are called ties."""

from mrepe_jax.experiments.toyworld.report.generative import _eq4_vs_procrustes


def scores(eq4, procrustes):
    return {"mrepe": {"success": {"0.3": eq4}}, "procrustes": {"success": {"0.3": procrustes}}}


def test_eq4_against_procrustes_says_beats_trails_or_ties():
    pairs = {"clip->clip_b": scores([0.5, 0.52], [0.3, 0.31]),
             "clip_b->clip": scores([0.2, 0.22], [0.4, 0.41]),
             "clip->captioner": scores([0.30, 0.36], [0.32, 0.33]),  # within the seeds' spread
             "captioner->clip": {"procrustes": {"success": {"0.3": [0.1]}}}}  # no eq 4 map: left out
    line = _eq4_vs_procrustes(pairs, "0.3")
    assert line == ("At alpha 0.3, the eq 4 map against Procrustes: CLIP → CLIP-B: beats (51.0 vs "
                    "30.5 %); CLIP-B → CLIP: trails (21.0 vs 40.5 %); CLIP → Captioner: ties with "
                    "(33.0 vs 32.5 %).")
    assert _eq4_vs_procrustes({"clip->clip_b": {"native": {}}}, "0.3") == ""


def test_captioner_section_of_a_restored_captioner_says_so():
    # Rerunning a workdir whose captioner checkpoint is finished runs no step: no final loss.
    from mrepe_jax.experiments.toyworld.report.generative import captioner_section

    cap = {"training": {"steps": 300, "final_loss": None}, "trained_in_seconds": 0.4, "eval_images": 8,
           "caption_accuracy": {"colour": 1.0}, "examples": [{"caption": "a red square", "truth": "a red square"}]}
    assert "restored from its checkpoint; 0.4 s this run" in captioner_section(cap)
    cap["training"]["final_loss"] = 0.12345
    assert "final loss 0.123;" in captioner_section(cap)
