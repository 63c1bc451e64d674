"""bench/compile_time.py --tiny runs each row in its own process, the cache rows share one cache,
and no row changes the effects."""

import pytest

from tests.benches import run_tiny


@pytest.mark.slow  # four subprocess runs of bench/patching.py (~30 s): `make test-slow`
def test_bench_compile_time_tiny():
    res, stdout = run_tiny("compile_time")
    assert res["bench"] == "compile_time" and res["backend"] == "cpu" and res["tiny"] is True
    assert list(res["rows"]) == ["default", "llvm_opt_0", "cache_cold", "cache_warm"]
    assert res["cache_entries"] > 0
    for name, row in res["rows"].items():
        assert row["compile_cache"] == name.startswith("cache")
        for key in ("exact_first_call_s", "exact_s", "attribution_first_call_s", "attribution_s"):
            assert row[key] > 0, (name, key)
        # The same programs read back from the cache compute the same numbers; other flags may
        # reassociate float sums, within the parity tolerance.
        assert row["max_effect_diff_vs_first_row"] <= (0.0 if row["compile_cache"] else 1e-5), name
        assert f"\n{name} " in stdout
