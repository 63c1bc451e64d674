"""mrepe_jax.parallel: the mesh, shardings and batch placement (DESIGN.md §7).

Multi-device checks run in a subprocess with 8 virtual CPU devices, so the rest of the test session
keeps its single device.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mrepe_jax import parallel
from tests.xla_flags import with_compile_flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_with_devices(script: str, n: int = 8, timeout: int = 600) -> dict:
    """Runs ``script`` with ``n`` virtual CPU devices; its last stdout line must be JSON."""
    env = dict(os.environ, XLA_FLAGS=with_compile_flags(f"--xla_force_host_platform_device_count={n}"),
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SCRIPT = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from mrepe_jax import parallel

    res = {"devices": jax.device_count()}
    mesh = parallel.make_mesh()
    res["mesh_shape"] = dict(mesh.shape)
    res["axis_types"] = [str(t) for t in mesh.axis_types]
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    batch = parallel.shard_batch({"x": x, "y": np.arange(16)}, mesh)
    res["shard_rows"] = sorted({s.data.shape[0] for s in batch["x"].addressable_shards})
    res["num_shards"] = len(batch["x"].addressable_shards)
    res["spec"] = str(batch["x"].sharding.spec)
    try:
        parallel.shard_batch({"x": x[:12]}, mesh)
        res["error"] = None
    except ValueError as e:
        res["error"] = str(e)

    f = lambda b: (jnp.sum(b["x"] ** 2, axis=0), b["x"] * 2)
    sharded = jax.jit(f, in_shardings=(parallel.data_sharding(mesh),),
                      out_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)))(batch)
    single = jax.jit(f)({"x": x, "y": np.arange(16)})
    res["reduce_err"] = float(np.abs(np.asarray(sharded[0]) - np.asarray(single[0])).max())
    res["map_err"] = float(np.abs(np.asarray(sharded[1]) - np.asarray(single[1])).max())
    res["out_replicated"] = sharded[0].sharding.is_fully_replicated

    mesh2 = parallel.make_mesh((4, 2), ("data", "model"))
    res["mesh2_shape"] = dict(mesh2.shape)
    shards = parallel.shard_batch({"x": x[:8]}, mesh2)["x"].addressable_shards
    res["mesh2_rows"] = sorted({s.data.shape[0] for s in shards})
    print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def eight():
    return run_with_devices(SCRIPT)


def test_mesh_over_eight_devices(eight):
    assert eight["devices"] == 8
    assert eight["mesh_shape"] == {"data": 8}
    assert all("Auto" in t for t in eight["axis_types"])
    assert eight["mesh2_shape"] == {"data": 4, "model": 2}


def test_shard_batch_splits_the_batch_axis(eight):
    assert eight["num_shards"] == 8 and eight["shard_rows"] == [2]
    assert "data" in eight["spec"]
    # On a (data=4, model=2) mesh the batch splits 4 ways and is replicated over "model".
    assert eight["mesh2_rows"] == [2]


def test_shard_batch_indivisible_names_both_numbers(eight):
    assert eight["error"] is not None
    assert "12" in eight["error"] and "8" in eight["error"]


def test_sharded_jit_equals_single_device(eight):
    assert eight["reduce_err"] <= 1e-5 * 16 * 48 ** 2
    assert eight["map_err"] == 0.0
    assert eight["out_replicated"]


def test_single_device_helpers():
    mesh = parallel.make_mesh()
    assert dict(mesh.shape) == {"data": jax.device_count()}
    assert parallel.data_sharding(mesh).spec == jax.P("data")
    assert parallel.replicated(mesh).is_fully_replicated
    batch = parallel.shard_batch({"x": np.ones((3, 2))}, mesh)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.ones((3, 2)))


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="needs 64 devices"):
        parallel.make_mesh((64,))
    with pytest.raises(ValueError, match="2 axes"):
        parallel.make_mesh((1, 1), ("data",))
    with pytest.raises(ValueError, match="no 'batch' axis"):
        parallel.data_sharding(parallel.make_mesh(), "batch")


def test_pad_batch_and_batch_size():
    padded, valid = parallel.pad_batch({"x": np.arange(3), "y": np.ones((3, 2))}, 8)
    assert padded["x"].shape == (8,) and padded["y"].shape == (8, 2)
    np.testing.assert_array_equal(valid, [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(padded["x"][3:], 0)  # repeats row 0: still a valid model input
    with pytest.raises(ValueError, match="disagree"):
        parallel.batch_size({"x": np.ones(3), "y": np.ones(4)})
    with pytest.raises(ValueError, match="larger than"):
        parallel.pad_batch({"x": np.ones(9)}, 8)
