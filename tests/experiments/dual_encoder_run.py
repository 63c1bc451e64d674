"""What the CLIP and CLAP experiment tests share: small settings for ``configs/clip.py`` and
``configs/clap.py`` (``stages.dual_encoder``), and the checks every finished run must pass per tower
and family."""

import numpy as np

from mrepe_jax.reading.bundles import load_bundle


def small(section: str, num: tuple[int, int, int], align: tuple[int, int], batch_size: int,
          steer_inputs: int, captions: int) -> list[str]:
    """Flags for a run of seconds: ``num`` examples per split, maps of 2 epochs on ``align`` =
    (train, test) pairs, 4 contrast pairs, 100 bootstrap resamples."""
    train, validation, test = num
    return [f"--config.model.batch_size={batch_size}", f"--config.steer.num_inputs={steer_inputs}",
            f"--config.align.num_train={align[0]}", f"--config.align.num_test={align[1]}",
            "--config.align.seeds=(0, 1)", "--config.align.map.epochs=2", "--config.align.map.batch_size=16",
            "--config.align.map.memory_size=16", "--config.align.map.hidden=8", "--config.align.map.num_anchors=4",
            f"--config.{section}.num.train={train}", f"--config.{section}.num.validation={validation}",
            f"--config.{section}.num.test={test}", f"--config.captions.limit={captions}",
            "--config.causal.num_pairs=4", "--config.causal.bootstrap_resamples=100"]


def check_towers(workdir, results: dict, model_name: str, towers: dict) -> None:
    """Per tower and family (``{tower: {family: values}}``): Table 1's figures in [0, 1], a unit
    direction bundle per value at the family's site with the model's provenance, a patching
    result of 4 pairs and its heatmap, and steering at the three alphas."""
    ident = results["identification"]
    for tower, families in towers.items():
        assert set(ident["mrepe"][tower]) == set(families)
        for family, values in families.items():
            for key in ("baseline", "mrepe", "direction_auroc"):
                assert 0.0 <= ident[key][tower][family] <= 1.0
            site = ident["direction_site"][tower][family]
            arrays, meta = load_bundle(workdir / "directions" / f"{tower}_{family}")
            assert set(arrays) == set(values) and meta["site"] == site
            assert meta["concept"] == {"family": family, "values": list(values)}
            assert meta["model"] == model_name and meta["weights_sha256"] == results["model"]["weights_sha256"]
            norms = np.linalg.norm(np.stack(list(arrays.values())), axis=-1)
            np.testing.assert_allclose(norms, 1.0, atol=1e-5)
            top = results["causal"][tower][family]
            assert -1.0 <= top["spearman_exact_vs_attribution"] <= 1.0 and top["num_pairs"] == 4
            assert (workdir / f"patching_{tower}_{family}_layer_position.png").stat().st_size > 1000
            steer = results["steering"][tower][family]
            assert set(steer["direct"]) == {"0.1", "0.3", "1.0"} and 0 <= steer["ap"] <= 1
