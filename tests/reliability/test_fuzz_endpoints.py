"""Property-based fuzzing of every POST endpoint against the real app, on a real port, over a real store.

For every case (see tests/reliability/strategies.py): never a 5xx or a dropped connection, 2xx for valid input,
4xx for bad input, a 4xx leaves the store exactly as it was, and a replay answered 2xx changes nothing it must
not. bench/fuzz.py runs the same properties with many more cases.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.harness import Target
from tests.reliability.strategies import ENDPOINTS, Case, Endpoint

EXAMPLES = 400


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_hostile_input_is_never_a_5xx_and_a_reject_changes_nothing(endpoint: Endpoint, tmp_path):
    with Target(tmp_path) as target:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=endpoint.cases)
        def holds(case: Case) -> None:
            tally = target.run(target.check(case))
            assert not tally.problems, "\n".join(tally.problems)

        holds()
