"""One process of a two-process streaming run, for tests/test_multiprocess.py (a helper, not a test).

    python -m tests.multiprocess_stream PROCESS_ID NUM_PROCESSES PORT OUT.json

Each process streams only its own rows of a dataset, in batches of other sizes and counts than
the other process's, through ``stream_statistics`` and ``collect_activations`` on the global mesh.
"""

import json
import sys

import numpy as np


def main(pid, n, port, out):
    from mrepe_jax import parallel

    if n > 1:
        parallel.initialize_distributed(f"127.0.0.1:{port}", n, pid, heartbeat_timeout_seconds=10)
    import jax

    from mrepe_jax.reading import activations as A
    from tests.reading.test_activations import VISION_SITES, G, dataset, tiny_clip

    model, params = tiny_clip()
    data = dataset(7, n=45)
    # Process 0 reads rows 0..29 in batches of 8 (4 batches), process 1 rows 30..44 in batches
    # of 6 (3 batches); one process alone reads them all in batches of 8.
    lo, hi, size = ((0, 45, 8) if n == 1 else ((0, 30, 8) if pid == 0 else (30, 45, 6)))
    mine = {k: v[lo:hi] for k, v in data.items()}
    batches = lambda: ({k: v[i:i + size] for k, v in mine.items()} for i in range(0, hi - lo, size))  # noqa: E731
    mesh = parallel.make_mesh()
    fn = A.tower_apply(model, "vision", "pixels")
    stats = A.stream_statistics(fn, batches(), VISION_SITES, params=params, group_fn="label",
                                num_groups=G, covariance=True, mesh=mesh, progress=False)
    rows = A.collect_activations(fn, batches(), "vision.proj", params=params, keep=("label",), mesh=mesh)
    res = {"processes": jax.process_count(), "rows": hi - lo, "collected": len(rows["vision.proj"]),
           "labels_aligned": bool(np.array_equal(rows["label"], mine["label"])),
           "proj": parallel.gather_rows(rows["vision.proj"]).tolist(),
           "stats": {s: {"count": m.count.tolist(), "mean": m.mean.tolist(), "m2": m.m2.tolist()}
                     for s, m in stats.items()}}
    if jax.process_index() == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    print(json.dumps({"process": pid, "rows": hi - lo, "collected": res["collected"],
                      "labels_aligned": res["labels_aligned"]}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
