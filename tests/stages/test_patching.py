"""The causal stage's plots: a text contrast's heatmap stops at the pairs' last real token and
labels positions with the first clean input's tokens."""

import numpy as np

from mrepe_jax.stages import patching
from tests.models.tiny import tiny_clip


def test_text_heatmap_stops_at_the_last_real_token_with_token_labels(tmp_path, monkeypatch):
    model, v, _, _, _ = tiny_clip()
    drawn = {}

    def heatmap(values, path, **kw):
        drawn[path.name] = (np.asarray(values), kw)

    monkeypatch.setattr(patching, "heatmap", heatmap)
    ids = np.array([[0, 5, 99, 1, 1], [0, 7, 8, 99, 1]], np.int32)
    mask = (ids != 1).astype(np.int32)
    mask[:, 0] = 1
    contrast = patching.Contrast(ids, ids[::-1].copy(), np.array([0, 1]), np.array([1, 0]), mask,
                                 mask[::-1].copy(), ("<s>", "red", "car", "</s>", "<pad>"))
    prompts = np.eye(3, 16, dtype=np.float32)
    out = patching.patching(model, v["params"], "text", "colour", contrast,
                            patching.prompt_metric(prompts, contrast), tmp_path,
                            n_resamples=10)
    values, kw = drawn["patching_text_colour_layer_position.png"]
    assert values.shape == (2, 4)  # 2 layers x the 4 positions up to the longest caption's EOS
    assert kw["xticks"] == ["0 <s>", "1 red", "2 car", "3 </s>"]
    assert 0 <= out["top_cell"]["position"] < 5  # the sweep itself covers every position
