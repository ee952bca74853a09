"""Judge benchmark: the sequential judge against a per-interval threshold rule and a fixed-horizon z-test.

Run by hand:  .venv/bin/python bench/judge.py                 (about 7 s on a 2-core machine; needs numpy)
              .venv/bin/python bench/judge.py --help          (rollouts, seed, traffic, correlation, rules)

Traffic (per rollout, per one-minute interval): 1,000 requests of k = 10 slots; each request goes to the canary
with probability 10%. A request's click propensity is drawn from a Beta distribution with mean p (stable: 5%,
canary: r * 5%) and intra-request correlation ICC (default 0.15), and its 10 slots are clicked independently
at that propensity: clicks within a request are correlated (design effect D = 1 + (k - 1) * ICC = 2.35), as
with real users. Per interval and arm the simulation draws how many requests had 0, 1, ..., 10 clicks from one
multinomial over the Beta-binomial distribution, which is exact for the aggregate counts (hits, hits squared,
requests, slots) without drawing single clicks. Scenarios: equal arms (r = 1) and a canary 10% worse (r = 0.9).

Every rule sees the SAME streams and is capped at 3x the fixed-horizon n of canary slots:
  * judge: controller.core.judge.judge() on cumulative counts after every interval, tolerance 5% (margin
    0.95x stable: equal arms are inside it, a 10% drop outside) with indifference 5% (alpha bounds FAIL at
    r >= 1.00, beta bounds PASS at r <= 0.90), alpha = beta = 5%, min 1000 slots per arm, min 5 minutes.
    At the cap an INCONCLUSIVE judge has neither rolled back nor detected anything, and is counted so.
    Variants: arms report requests and sum of squared clicks per request (the dispersion is measured: the
    headline), requests only (worst-case dispersion), nothing (D = 1, correlation ignored), the true D.
  * threshold rule (Argo Rollouts / Flagger style): each interval, canary precision / stable precision of that
    interval >= 0.95 succeeds, else fails; 3 failures -> rollback; pass after as many intervals as the
    fixed-horizon n takes. A variant measures over 10-interval windows.
  * fixed horizon: one-sided z-test of p_c >= p_s at alpha 5% with 95% power for a 10% drop, n of canary slots
    from the standard two-proportion formula times the design effect (the planner knows D), analysed once at n
    with the measured (cluster-robust) variance; no verdict before n.

Human-readable tables first; the LAST line of output is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.core.judge import Arm, JudgeConfig, Observation, Outcome, judge  # noqa: E402

Z = NormalDist()


@dataclass(frozen=True)
class Streams:
    """Per-interval counts, shape (rollouts, intervals), for one scenario."""

    units: dict[str, np.ndarray]
    hits: dict[str, np.ndarray]
    hits_sq: dict[str, np.ndarray]
    k: int


@dataclass
class Outcomes:
    rolled_back: np.ndarray  # bool per rollout
    passed: np.ndarray  # bool per rollout
    exposure: np.ndarray  # canary slots at the decision (or at the cap)

    @property
    def rollback_rate(self) -> float:
        return float(self.rolled_back.mean())

    @property
    def pass_rate(self) -> float:
        return float(self.passed.mean())

    @property
    def undecided_rate(self) -> float:
        return float((~self.rolled_back & ~self.passed).mean())

    @property
    def median_exposure(self) -> float:
        return float(np.median(self.exposure))


def beta_binomial_pmf(k: int, mean: float, icc: float) -> np.ndarray:
    if icc <= 0:
        return np.array([math.comb(k, j) * mean**j * (1 - mean) ** (k - j) for j in range(k + 1)])
    s = (1 - icc) / icc
    a, b = mean * s, (1 - mean) * s

    def lbeta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    pmf = np.array([math.comb(k, j) * math.exp(lbeta(j + a, k - j + b) - lbeta(a, b)) for j in range(k + 1)])
    return pmf / pmf.sum()


def simulate(rng: np.random.Generator, args: argparse.Namespace, ratio: float, intervals: int) -> Streams:
    k = args.k
    shape = (args.rollouts, intervals)
    canary_units = rng.binomial(args.requests, args.canary_share, size=shape)
    units = {"canary": canary_units, "stable": args.requests - canary_units}
    j = np.arange(k + 1)
    hits, hits_sq = {}, {}
    for arm, p in (("stable", args.base), ("canary", args.base * ratio)):
        counts = rng.multinomial(units[arm], beta_binomial_pmf(k, p, args.icc))  # (rollouts, intervals, k+1)
        hits[arm] = counts @ j
        hits_sq[arm] = counts @ (j * j)
    return Streams(units, hits, hits_sq, k)


def fixed_horizon_n(args: argparse.Namespace, deff: float) -> float:
    """Canary slots for a one-sided two-proportion z-test: alpha, power 1-beta at a `drop` relative drop."""
    kappa = (1 - args.canary_share) / args.canary_share  # stable slots per canary slot
    p_s, p_c = args.base, args.base * (1 - args.drop)
    p_bar = (p_c + kappa * p_s) / (1 + kappa)
    z_a, z_b = Z.inv_cdf(1 - args.alpha), Z.inv_cdf(1 - args.alpha)  # power 1 - alpha: both errors at alpha
    root = z_a * math.sqrt(p_bar * (1 - p_bar) * (1 + 1 / kappa)) + z_b * math.sqrt(
        p_c * (1 - p_c) + p_s * (1 - p_s) / kappa
    )
    return deff * root**2 / (p_s - p_c) ** 2


def run_judge(s: Streams, config: JudgeConfig, report: str, interval: timedelta, cap: float) -> Outcomes:
    """report: 'full' (units + hits_sq), 'units' or 'none' (hits and slots only)."""
    cum = {
        key: {arm: np.cumsum(arr[arm], axis=1).tolist() for arm in ("stable", "canary")}
        for key, arr in (("units", s.units), ("hits", s.hits), ("hits_sq", s.hits_sq))
    }
    n = len(cum["units"]["canary"])
    rolled, passed, exposure = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    for i in range(n):
        for t in range(len(cum["units"]["canary"][i])):
            arms = []
            for arm in ("stable", "canary"):
                u, h, h2 = cum["units"][arm][i][t], cum["hits"][arm][i][t], cum["hits_sq"][arm][i][t]
                arms.append(
                    Arm(h, u * s.k, u if report != "none" else None, h2 if report == "full" else None)
                )
            canary_slots = cum["units"]["canary"][i][t] * s.k
            v = judge(Observation(arms[0], arms[1], interval * (t + 1)), config)
            if v.outcome in (Outcome.FAIL, Outcome.PASS) or canary_slots >= cap:
                rolled[i] = v.outcome is Outcome.FAIL
                passed[i] = v.outcome is Outcome.PASS
                exposure[i] = canary_slots
                break
    return Outcomes(rolled, passed, exposure)


def run_threshold_rule(s: Streams, threshold: float, failure_limit: int, count: int, window: int) -> Outcomes:
    """Per-measurement ratio of precisions vs a threshold; `window` intervals per measurement."""
    n, intervals = s.units["canary"].shape
    m = intervals // window
    per = {
        key: {arm: arr[arm][:, : m * window].reshape(n, m, window).sum(axis=2) for arm in ("stable", "canary")}
        for key, arr in (("units", s.units), ("hits", s.hits))
    }
    p_c = per["hits"]["canary"] / np.maximum(per["units"]["canary"] * s.k, 1)
    p_s = per["hits"]["stable"] / np.maximum(per["units"]["stable"] * s.k, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.where(p_s > 0, p_c / p_s, np.where(p_c > 0, np.inf, 1.0)) >= threshold
    fails = np.cumsum(~ok, axis=1)
    slots = np.cumsum(per["units"]["canary"] * s.k, axis=1)
    count = min(count, m)
    rolled, passed, exposure = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    for i in range(n):
        hit = np.nonzero(fails[i, :count] >= failure_limit)[0]
        if hit.size:
            rolled[i], exposure[i] = True, slots[i, hit[0]]
        else:
            passed[i], exposure[i] = True, slots[i, count - 1]
    return Outcomes(rolled, passed, exposure)


def run_fixed(s: Streams, n_fixed: float, alpha: float, peek: bool = False) -> Outcomes:
    """One-sided z-test of p_c >= p_s with a cluster-robust (per-request) variance, at n_fixed canary slots.
    peek=True: the same test at every interval up to n (rollback at the first rejection), to show the cost."""
    cum = {
        key: {arm: np.cumsum(arr[arm], axis=1).astype(float) for arm in ("stable", "canary")}
        for key, arr in (("units", s.units), ("hits", s.hits), ("hits_sq", s.hits_sq))
    }
    var, p = {}, {}
    for arm in ("stable", "canary"):
        u, h, h2 = cum["units"][arm], cum["hits"][arm], cum["hits_sq"][arm]
        p[arm] = h / (u * s.k)
        s2 = np.maximum(h2 - h * h / u, 0) / np.maximum(u - 1, 1)  # per-request variance of hits
        var[arm] = s2 * u / (u * s.k) ** 2
    z = (p["canary"] - p["stable"]) / np.sqrt(np.maximum(var["canary"] + var["stable"], 1e-300))
    reject = z < -Z.inv_cdf(1 - alpha)
    slots = cum["units"]["canary"] * s.k
    n = slots.shape[0]
    rolled, passed, exposure = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    for i in range(n):
        at = int(np.searchsorted(slots[i], n_fixed))  # first interval with >= n_fixed canary slots
        at = min(at, slots.shape[1] - 1)
        looks = np.nonzero(reject[i, : at + 1])[0] if peek else ([at] if reject[i, at] else [])
        if len(looks):
            rolled[i], exposure[i] = True, slots[i, looks[0]]
        else:
            passed[i], exposure[i] = True, slots[i, at]
    return Outcomes(rolled, passed, exposure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=1000, help="simulated rollouts per scenario")
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--requests", type=int, default=1000, help="requests per interval (one minute), both arms")
    ap.add_argument("--canary-share", type=float, default=0.10)
    ap.add_argument("--k", type=int, default=10, help="slots per request")
    ap.add_argument("--base", type=float, default=0.05, help="stable precision@k")
    ap.add_argument("--icc", type=float, default=0.15, help="intra-request correlation of clicks")
    ap.add_argument("--drop", type=float, default=0.10, help="relative drop of the bad canary")
    ap.add_argument("--alpha", type=float, default=0.05, help="false rollback (and false promotion) target")
    ap.add_argument("--cap", type=float, default=3.0, help="cap, in multiples of the fixed-horizon n")
    ap.add_argument("--threshold", type=float, default=0.95, help="threshold rule: min precision ratio")
    ap.add_argument("--failure-limit", type=int, default=3, help="threshold rule: failures before rollback")
    args = ap.parse_args()

    started = time.perf_counter()
    deff = 1 + (args.k - 1) * args.icc
    n_fixed = fixed_horizon_n(args, deff)
    slots_per_interval = args.requests * args.canary_share * args.k
    cap = args.cap * n_fixed
    intervals = math.ceil(cap / slots_per_interval * 1.15) + 5  # enough for the cap despite routing noise
    count = math.ceil(n_fixed / slots_per_interval)
    interval = timedelta(minutes=1)
    config = JudgeConfig(tolerance=0.05, indifference=0.05, alpha=args.alpha, beta=args.alpha)

    print(f"traffic: {args.requests} requests/interval x {args.k} slots, canary share {args.canary_share:.0%}, "
          f"stable precision {args.base:.1%}, ICC {args.icc} (design effect {deff:.2f})")
    print(f"fixed-horizon n: {n_fixed:,.0f} canary slots ({n_fixed / args.k:,.0f} requests, "
          f"{n_fixed / slots_per_interval:.1f} intervals); cap {cap:,.0f} slots; rollouts {args.rollouts}, "
          f"seed {args.seed}")
    print(f"judge: tolerance {config.tolerance:.0%} (margin {1 - config.tolerance:.2f}x), indifference "
          f"{config.indifference:.0%} (alpha at r>={config.good_ratio:.2f}, beta at r<={config.bad_ratio:.2f}), "
          f"alpha=beta={args.alpha}, min {config.min_trials:g} slots/arm, min {config.min_duration}")

    rng = np.random.default_rng(args.seed)
    scenarios = {
        "equal": simulate(rng, args, 1.0, intervals),
        "drop": simulate(rng, args, 1 - args.drop, intervals),
    }
    sim_done = time.perf_counter()

    rules = [
        ("judge, measured dispersion (units + hits_sq)", lambda s: run_judge(s, config, "full", interval, cap)),
        ("judge, units only (worst-case D = k)", lambda s: run_judge(s, config, "units", interval, cap)),
        ("judge, correlation ignored (D = 1)", lambda s: run_judge(s, config, "none", interval, cap)),
        (
            f"judge, true D = {deff:.2f} configured",
            lambda s: run_judge(
                s, JudgeConfig(alpha=args.alpha, beta=args.alpha, overdispersion=deff), "none", interval, cap
            ),
        ),
        (
            f"threshold rule: ratio >= {args.threshold} per interval, {args.failure_limit} fails, pass after {count}",
            lambda s: run_threshold_rule(s, args.threshold, args.failure_limit, count, 1),
        ),
        (
            f"threshold rule over 10-interval windows, pass after {math.ceil(count / 10)}",
            lambda s: run_threshold_rule(s, args.threshold, args.failure_limit, math.ceil(count / 10), 10),
        ),
        ("fixed-horizon z-test at n", lambda s: run_fixed(s, n_fixed, args.alpha)),
        ("the same z-test peeked every interval up to n", lambda s: run_fixed(s, n_fixed, args.alpha, True)),
    ]
    results: dict[str, dict[str, Outcomes]] = {}
    for name, rule in rules:
        results[name] = {sc: rule(streams) for sc, streams in scenarios.items()}
    done = time.perf_counter()

    header = (f"{'rule':<66} {'false rb':>8} {'detect':>7} {'eq pass':>7} {'eq cap':>6} {'drop cap':>8} "
              f"{'med exp drop':>12} {'x n':>5} {'med exp eq':>10} {'x n':>5}")
    print()
    print(header)
    print("-" * len(header))
    for name, by in results.items():
        eq, dr = by["equal"], by["drop"]
        print(f"{name:<66} {eq.rollback_rate:>8.3f} {dr.rollback_rate:>7.3f} {eq.pass_rate:>7.3f} "
              f"{eq.undecided_rate:>6.3f} {dr.undecided_rate:>8.3f} {dr.median_exposure:>12,.0f} "
              f"{dr.median_exposure / n_fixed:>5.2f} {eq.median_exposure:>10,.0f} {eq.median_exposure / n_fixed:>5.2f}")
    print()
    print("false rb = FAIL/rollback with equal arms; detect = FAIL/rollback with a 10% drop; eq pass = PASS with equal")
    print("arms; cap = no decision by the cap (INCONCLUSIVE: counted as not rolled back and not detected);")
    print("med exp = median canary slots exposed until the decision or the cap; x n = that over the fixed-horizon n.")

    head = results[rules[0][0]]
    base = results[rules[4][0]]
    fr, det = head["equal"].rollback_rate, head["drop"].rollback_rate
    ratio = head["drop"].median_exposure / n_fixed
    targets = [
        ("false rollback <= 5%", fr <= 0.05, f"{fr:.3f}"),
        ("detection >= 95%", det >= 0.95, f"{det:.3f}"),
        ("median exposure (10% drop) <= 0.6x fixed n", ratio <= 0.6, f"{ratio:.2f}"),
    ]
    print()
    for what, ok, value in targets:
        print(f"target {what}: {'met' if ok else 'NOT MET'} ({value})")
    print(f"simulation {sim_done - started:.1f} s, rules {done - sim_done:.1f} s, total {done - started:.1f} s")
    print(json.dumps({
        "false_rollback_rate": round(fr, 4),
        "detection_rate": round(det, 4),
        "exposure_ratio_vs_fixed": round(ratio, 3),
        "baseline_rule": {
            "false_rollback_rate": round(base["equal"].rollback_rate, 4),
            "detection_rate": round(base["drop"].rollback_rate, 4),
        },
    }))


if __name__ == "__main__":
    main()
