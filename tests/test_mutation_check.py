"""The mutation check of the equations (issue 29): every listed bug must fail the tests of its module."""

import io

import pytest

from tests.mutation import harness
from tests.mutation.mutants import MUTANTS


def test_every_mutant_matches_the_code():
    """Cheap, in ``make test``: each mutant's snippet still occurs exactly once in its file."""
    harness.check(MUTANTS)
    assert len(MUTANTS) >= 20
    assert any(m.sanity for m in MUTANTS)


@pytest.mark.slow
def test_every_mutant_of_the_equations_is_killed():
    """Runs ``python -m tests.mutation.harness`` over every mutant of ``tests/mutation/mutants.py``:
    each is applied to a temporary copy of the package and the tests of its module run against it.

    Run time: 414 s for 33 mutants (5-40 s each) on the 2-core box, with other work on it.
    """
    out = io.StringIO()
    summary = harness.run(MUTANTS, out=out)
    report = out.getvalue()
    assert summary["error"] == 0, f"mutants whose tests could not run: {summary['errors']}\n{report}"
    assert summary["survived"] == 0, f"mutants no test caught: {summary['survivors']}\n{report}"
    assert summary["killed"] == len(MUTANTS)
