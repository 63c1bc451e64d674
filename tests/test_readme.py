"""The README's code example runs as written (on a tiny checkpoint saved to a temp directory)."""

import re
from pathlib import Path

import jax.numpy as jnp

from mrepe_jax.models.clip_convert import save_pretrained
from tests.models.tiny import tiny_clip

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path):
    model, variables, pixels, ids, mask = tiny_clip()
    save_pretrained(tmp_path / "clip", model.config, variables["params"])
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace('"path/to/clip-vit-base-patch32"', repr(str(tmp_path / "clip")))
    code = code.replace("vision.layers.6.", "vision.layers.1.")  # the tiny model has 2 layers
    scope = {"pixels": pixels, "input_ids": ids, "attention_mask": mask, "delta": jnp.ones(32)}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["logits"].shape == (64, 2, 2)
    assert scope["ablated"]["image_embeds"].shape == (2, 16)
    assert set(scope["acts"]) == {"vision.layers.0.resid_post", "vision.layers.1.resid_post"}
