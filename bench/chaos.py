"""Crash-consistency benchmark: runs end to end on real parts while the controller is SIGKILLed and restarted.

Run by hand:  .venv/bin/python bench/chaos.py --trials 200      (roughly 10 s a trial on 2 cores)

Real Alertmanager, Prometheus, etcd + kube-apiserver (the controller under its k8s/ Role), the GitLab stand-in and
the controller as a subprocess; the driver is tests/reliability/chaos.py. Every trial fires alerts, lets the
pipeline report an image, lets the canary be judged (good or bad per trial, so both promotion and rollback happen),
kills the controller at the armed points, then stops the faults, waits for every run to end and checks the
invariants (tests/reliability/invariants.py). Prints one line per trial, the kill points with how often each was
armed and hit, and last one JSON object: {"trials": .., "kills": .., "violations": ..}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.chaos import Chaos  # noqa: E402
from tests.reliability.rig import Rig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, store) and print its path")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    started = time.monotonic()
    with Rig(workdir, args.seed) as rig:
        print(f"rig up in {time.monotonic() - started:.1f}s ({workdir})", flush=True)
        chaos = Chaos(rig, args.seed, log=lambda line: print(line, flush=True))
        chaos.run(args.trials)
        lines = chaos.summary()
    print(f"wall time {time.monotonic() - started:.0f}s")
    if args.keep:
        print(f"work dir kept: {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    return 0 if chaos.report()["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
