"""Fuzzing benchmark: the hostile-input properties of tests/reliability/test_fuzz_endpoints.py, many more cases.

Run by hand:  .venv/bin/python bench/fuzz.py                  (10,000 cases per endpoint, 2 processes)
              .venv/bin/python bench/fuzz.py --cases 500 --seed 7 --jobs 1

Every POST endpoint gets its own real controller (real port, real SQLite store on disk) and hypothesis draws
cases from the same strategies as the tests (tests/reliability/strategies.py): valid requests, replays, one field
mutated, junk and pathological bodies, wrong tokens, wrong content types, oversized and lying bodies, junk headers,
unknown runs and models. Nothing stops at the first failure: every violation is counted. The LAST line of output
is one JSON object: {"cases", "endpoints", "server_errors", "store_changes_on_reject", ...}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from controller.observability import setup_logging  # noqa: E402
from tests.reliability.harness import Tally, Target  # noqa: E402
from tests.reliability.strategies import ENDPOINTS, Case  # noqa: E402


def fuzz(index: int, cases: int, run_seed: int) -> tuple[str, Tally, float]:
    endpoint = ENDPOINTS[index]
    total = Tally()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "controller.log", "w") as log:
        setup_logging("info", "json", stream=log)  # the controller's own lines, kept out of the figures
        with Target(Path(tmp)) as target:

            @seed(run_seed + index)
            @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=endpoint.cases)
            def one(case: Case) -> None:
                total.add(target.run(target.check(case)))

            one()
    return endpoint.name, total, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="cases per endpoint")
    p.add_argument("--jobs", type=int, default=2, help="endpoints fuzzed at once (processes)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    run_seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"{len(ENDPOINTS)} endpoints x {args.cases} cases, seed {run_seed}, {args.jobs} process(es)", flush=True)
    started = time.perf_counter()
    total = Tally()
    print(f"{'endpoint':42} {'cases':>7} {'requests':>8} {'2xx':>6} {'4xx':>6} {'5xx':>4} {'none':>4} "
          f"{'reject changed store':>20} {'wrong class':>11} {'s':>6}")  # fmt: skip
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(fuzz, i, args.cases, run_seed) for i in range(len(ENDPOINTS))]
        for future in futures:
            name, t, took = future.result()
            total.add(t)
            s = t.statuses
            print(f"{name:42} {t.cases:>7} {t.requests:>8} {s.get('2xx', 0):>6} {s.get('4xx', 0):>6} "
                  f"{s.get('5xx', 0):>4} {s.get('none', 0):>4} {t.store_changes_on_reject:>20} {t.wrong_class:>11} "
                  f"{took:>6.0f}", flush=True)  # fmt: skip
    for problem in total.problems[:20]:
        print("PROBLEM", problem[:2000])
    elapsed = time.perf_counter() - started
    print(f"{total.cases} cases ({total.requests} requests) in {elapsed:.0f} s, {total.cases / elapsed:.0f} cases/s")
    print(json.dumps({
        "cases": total.cases, "endpoints": len(ENDPOINTS), "requests": total.requests,
        "server_errors": total.server_errors, "no_answer": total.no_answer,
        "store_changes_on_reject": total.store_changes_on_reject, "wrong_class": total.wrong_class,
        "problems": len(total.problems), "seed": run_seed, "seconds": round(elapsed, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
