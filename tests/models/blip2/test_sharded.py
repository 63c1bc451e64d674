"""BLIP-2 greedy generation with the batch sharded over 8 virtual CPU devices' ``data`` axis gives
the one-device tokens (DESIGN.md §7). Slow (~1 min, a subprocess that builds the tiny HF model):
``make test-slow``."""

import pytest

from tests.test_parallel import run_with_devices

SCRIPT = """
    import json
    import jax, numpy as np
    from mrepe_jax import parallel
    from mrepe_jax.models.blip2 import model as blip2
    from tests.models.blip2.test_parity import N_NEW, converted, nhwc, prompt

    model, params = converted("xattn2_opt2")
    pixels, ids, mask = prompt(seed=3, lengths=(6, 3, 1, 4, 2, 5, 6, 1))  # 8 rows, left-padded
    x, ids, mask = nhwc(pixels), ids.astype(np.int32), mask.astype(np.int32)
    one_tokens, one_logits = blip2.generate(model, params, x, ids, mask, N_NEW, eos_token_id=(),
                                            return_logits=True)
    mesh = parallel.make_mesh()
    placed = parallel.shard_batch((x, ids, mask), mesh)
    tokens, logits = blip2.generate(model, params, *placed, N_NEW, eos_token_id=(), return_logits=True)
    print(json.dumps({
        "devices": jax.device_count(),
        "input_spec": str(placed[0].sharding.spec),
        "tokens_equal": bool(np.array_equal(np.asarray(tokens), np.asarray(one_tokens))),
        "distinct_rows": len({tuple(r) for r in np.asarray(one_tokens).tolist()}),
        "logits_err": float(np.abs(np.asarray(logits) - np.asarray(one_logits)).max()),
        "logits_scale": float(np.abs(np.asarray(one_logits)).max()),
    }))
"""


@pytest.mark.slow
def test_generation_with_the_batch_on_eight_devices_equals_one():
    res = run_with_devices(SCRIPT)
    assert res["devices"] == 8 and "data" in res["input_spec"]
    assert res["distinct_rows"] > 1  # the rows decode differently: a row mix-up would show
    assert res["tokens_equal"], res
    assert res["logits_err"] <= 1e-5 * max(1.0, res["logits_scale"]), res
