from __future__ import annotations

import math
import random
from datetime import timedelta
from statistics import NormalDist

import pytest

from controller.core.judge import (
    Arm,
    Direction,
    Guardrail,
    JudgeConfig,
    Observation,
    Outcome,
    Source,
    evidence,
    judge,
)

O = Outcome
CONFIG = JudgeConfig()  # tolerance 5%, indifference 5%: alpha at r >= 1.00, beta at r <= 0.90
LONG = timedelta(minutes=30)

# 5% precision on both arms, canary on 10% of the slots: enough for a verdict either way.
STABLE = Arm(hits=9_000, trials=180_000)
EQUAL = Arm(hits=1_000, trials=20_000)
WORSE = Arm(hits=900, trials=20_000)  # 10% worse
BETTER = Arm(hits=1_100, trials=20_000)  # 10% better
MIDDLE = Arm(hits=950, trials=20_000)  # on the 0.95 margin
LATENCY_OK = Guardrail("p99_latency_seconds", 0.180, 0.250)
ERRORS_OK = Guardrail("error_rate", 0.001, 0.01)


def obs(stable=STABLE, canary=EQUAL, elapsed=LONG, guardrails=(LATENCY_OK, ERRORS_OK), **kw) -> Observation:
    return Observation(stable, canary, elapsed, tuple(guardrails), **kw)


CASES = [
    # (name, observation, outcome, words the reason must contain)
    ("equal arms", obs(), O.PASS, "within the 0.95x margin"),
    ("canary 10% worse", obs(canary=WORSE), O.FAIL, "below the 0.95x margin"),
    ("canary 10% better", obs(canary=BETTER), O.PASS, "within"),
    ("canary on the margin", obs(canary=MIDDLE), O.INCONCLUSIVE, "not enough evidence"),
    ("tiny traffic", obs(Arm(45, 900), Arm(5, 100), elapsed=LONG), O.INCONCLUSIVE, "not enough evidence"),
    ("tiny traffic, canary far better", obs(Arm(450, 9_000), Arm(60, 400)), O.INCONCLUSIVE, "400 trials, under"),
    ("no hits on either arm", obs(Arm(0, 5_000), Arm(0, 500)), O.INCONCLUSIVE, "stable has no hits"),
    ("NaN hits", obs(canary=Arm(float("nan"), 20_000)), O.NO_DATA, "canary hits is nan"),
    ("infinite trials", obs(stable=Arm(9_000, float("inf"))), O.NO_DATA, "stable trials is inf"),
    ("counter reset", obs(canary=Arm(-120, 20_000)), O.NO_DATA, "counter reset"),
    ("counter reset of units", obs(canary=Arm(1_000, 20_000, units=-3)), O.NO_DATA, "counter reset"),
    ("canary empty", obs(canary=Arm(0, 0)), O.NO_DATA, "canary arm served no trials"),
    ("stable empty", obs(stable=Arm(0, 0)), O.NO_DATA, "stable arm served no trials"),
    ("canary missing", obs(canary=None), O.NO_DATA, "no counts for the canary"),
    ("hits above trials", obs(canary=Arm(30_000, 20_000)), O.ERROR, "more hits"),
    ("units above trials", obs(canary=Arm(1_000, 20_000, units=30_000)), O.ERROR, "units for"),
    ("hits_sq impossible", obs(canary=Arm(1_000, 20_000, units=2_000, hits_sq=10)), O.ERROR, "hits_sq"),
    ("hits not a number", obs(canary=Arm("12", 20_000)), O.ERROR, "not a number"),  # type: ignore[arg-type]
    ("negative elapsed", obs(elapsed=timedelta(seconds=-5)), O.ERROR, "negative"),
    ("source error", obs(source=Source.ERROR, detail="connection refused"), O.ERROR, "connection refused"),
    ("source no data", obs(source=Source.NO_DATA, detail="empty vector"), O.NO_DATA, "empty vector"),
    (
        "guardrail breach beats a passing canary",
        obs(guardrails=(Guardrail("error_rate", 0.031, 0.02),)),
        O.FAIL,
        "error_rate breached: 0.031 > 0.02",
    ),
    (
        "guardrail breach on a minimum",
        obs(guardrails=(Guardrail("qps_ratio", 0.4, 0.8, Direction.MIN),)),
        O.FAIL,
        "qps_ratio breached: 0.4 < 0.8",
    ),
    (
        "latency quantile past the last bucket",
        obs(guardrails=(Guardrail("p99_latency_seconds", math.inf, 0.25),)),
        O.FAIL,
        "breached: inf > 0.25",
    ),
    (
        "guardrail breach even without counts",
        obs(canary=None, guardrails=(Guardrail("error_rate", 0.5, 0.02),)),
        O.FAIL,
        "breached",
    ),
    ("guardrail no data", obs(guardrails=(LATENCY_OK, Guardrail("error_rate", None, 0.01))), O.NO_DATA, "no data"),
    ("guardrail NaN", obs(guardrails=(Guardrail("error_rate", float("nan"), 0.01),)), O.NO_DATA, "cannot pass"),
    (
        "guardrail no data but precision already fails",
        obs(canary=WORSE, guardrails=(Guardrail("error_rate", None, 0.01),)),
        O.FAIL,
        "below the 0.95x margin",
    ),
    ("guardrail without threshold", obs(guardrails=(Guardrail("x", 1.0, float("nan")),)), O.ERROR, "threshold"),
    ("minimum duration not met", obs(elapsed=timedelta(minutes=3)), O.INCONCLUSIVE, "3m old, under the minimum 5m"),
    ("minimum duration not met, canary worse", obs(canary=WORSE, elapsed=timedelta(minutes=3)), O.FAIL, "below"),
]  # fmt: skip


@pytest.mark.parametrize("name,observation,outcome,words", CASES, ids=[c[0] for c in CASES])
def test_table(name, observation, outcome, words):
    v = judge(observation, CONFIG)
    assert v.outcome is outcome, v.reason
    assert words in v.reason
    assert "\n" not in v.reason


def test_fail_and_pass_report_statistic_and_threshold():
    failed = judge(obs(canary=WORSE), CONFIG)
    assert failed.statistic is not None and failed.statistic >= failed.threshold == round(math.log(20), 4)
    assert failed.ratio == pytest.approx(0.9)
    passed = judge(obs(), CONFIG)
    assert passed.statistic is not None and passed.statistic <= passed.threshold == round(math.log(0.05), 4)
    assert passed.design_effect == 1.0


def test_never_passes_without_evidence_and_minimums():
    """A sweep of small, partial or broken inputs: whatever else happens, none of them passes."""
    arms = [Arm(0, 0), Arm(3, 50), Arm(60, 500), Arm(500, 999), Arm(float("nan"), 10), Arm(-1, 10), None]
    for stable in arms:
        for canary in arms:
            for elapsed in (timedelta(0), timedelta(minutes=1), LONG):
                v = judge(obs(stable, canary, elapsed), CONFIG)
                assert v.outcome is not O.PASS, (stable, canary, elapsed, v)
    for guard in (Guardrail("e", None, 1), Guardrail("e", float("nan"), 1)):
        assert judge(obs(guardrails=(guard,)), CONFIG).outcome is O.NO_DATA
    for source in (Source.NO_DATA, Source.ERROR):
        assert judge(obs(source=source), CONFIG).outcome is not O.PASS


def test_the_margin_and_indifference_come_from_config():
    # Tolerating 15% around a 10% band (r_good 0.95, r_bad 0.75): a 10% drop is now acceptable.
    loose = JudgeConfig(tolerance=0.15, indifference=0.10)
    assert (loose.good_ratio, loose.bad_ratio) == pytest.approx((0.95, 0.75))
    assert judge(obs(canary=WORSE), loose).outcome is O.PASS


def test_overdispersion_from_config_shrinks_the_evidence():
    plain = evidence(STABLE, WORSE, CONFIG)
    inflated = evidence(STABLE, WORSE, JudgeConfig(overdispersion=2.5))
    assert inflated.statistic == pytest.approx(plain.statistic / 2.5)
    assert inflated.design_effect == pytest.approx(2.5) and inflated.dispersion_from == "config"
    assert judge(obs(canary=WORSE), JudgeConfig(overdispersion=2.5)).outcome is O.INCONCLUSIVE


def test_dispersion_measured_from_units_and_squares():
    # 2,000 requests of 10 slots each. Hits spread one per request: no more variance than independent slots.
    spread = Arm(900, 20_000, units=2_000, hits_sq=900)
    # The same hits clustered: 90 requests with all 10 slots clicked: as correlated as it gets.
    clustered = Arm(900, 20_000, units=2_000, hits_sq=90 * 100)
    stable_spread = Arm(9_000, 180_000, units=18_000, hits_sq=9_000)
    stable_clustered = Arm(9_000, 180_000, units=18_000, hits_sq=900 * 100)
    assert evidence(stable_spread, spread, CONFIG).design_effect == pytest.approx(1.0)
    many = evidence(stable_clustered, clustered, CONFIG)
    assert many.dispersion_from == "data" and many.design_effect == pytest.approx(10.0, rel=0.01)
    assert judge(obs(stable_spread, spread), CONFIG).outcome is O.FAIL
    assert judge(obs(stable_clustered, clustered), CONFIG).outcome is O.INCONCLUSIVE
    # The larger of the two arms' dispersions is used for both.
    assert evidence(stable_clustered, spread, CONFIG).design_effect == pytest.approx(10.0, rel=0.01)
    # Units without squares: the worst case, trials/units slots clicked alike.
    worst = evidence(Arm(9_000, 180_000, units=18_000), Arm(900, 20_000, units=2_000), CONFIG)
    assert worst.dispersion_from == "worst_case" and worst.design_effect == pytest.approx(10.0)
    # A canary with no hits borrows stable's dispersion.
    assert evidence(stable_spread, Arm(0, 20_000, units=2_000, hits_sq=0), CONFIG).dispersion_from == "data"


def test_a_dead_canary_fails_fast():
    v = judge(obs(Arm(2_250, 45_000), Arm(0, 5_000), elapsed=timedelta(minutes=2)), CONFIG)
    assert v.outcome is O.FAIL and v.ratio == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0}, {"alpha": 0.6}, {"beta": float("nan")}, {"tolerance": 1.0}, {"tolerance": -0.1},
        {"indifference": 0}, {"tolerance": 0.5, "indifference": 0.5}, {"min_trials": -1},
        {"min_duration": timedelta(seconds=-1)}, {"overdispersion": 0.5}, {"overdispersion": math.inf},
    ],
)  # fmt: skip
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError, match="judge config"):
        JudgeConfig(**kwargs)


# --- repeated looks -------------------------------------------------------------------------------------------

def _rollouts(seed: int, ratio: float, deff: float, config: JudgeConfig, n: int = 300, looks: int = 40):
    """Canary 1,000 slots and stable 9,000 slots a look at 5% precision; hits drawn with variance inflated by
    `deff` (normal approximation of per-look counts). Returns the judge's verdicts and, for comparison, whether
    a naive one-sided z-test (alpha 5%) would have rolled back at any of the same looks."""
    rnd = random.Random(seed)
    z_crit = NormalDist().inv_cdf(0.95)
    verdicts, naive = [], []
    for _ in range(n):
        hs = ns = hc = nc = 0
        outcome, naive_fail = O.INCONCLUSIVE, False
        for t in range(1, looks + 1):
            for arm_n, p in ((9_000, 0.05), (1_000, 0.05 * ratio)):
                h = max(0, round(rnd.gauss(arm_n * p, math.sqrt(deff * arm_n * p * (1 - p)))))
                if arm_n == 9_000:
                    hs, ns = hs + h, ns + arm_n
                else:
                    hc, nc = hc + h, nc + arm_n
            ps, pc = hs / ns, hc / nc
            se = math.sqrt(deff * (ps * (1 - ps) / ns + pc * (1 - pc) / nc)) or 1.0
            naive_fail = naive_fail or (pc - ps) / se < -z_crit
            if outcome is O.INCONCLUSIVE:
                outcome = judge(obs(Arm(hs, ns), Arm(hc, nc), timedelta(minutes=t)), config).outcome
        verdicts.append(outcome)
        naive.append(naive_fail)
    return verdicts, naive


def test_repeated_looks_at_equal_arms_rarely_fail():
    verdicts, naive = _rollouts(seed=7, ratio=1.0, deff=1.0, config=CONFIG)
    assert verdicts.count(O.FAIL) / len(verdicts) <= 0.05
    assert verdicts.count(O.PASS) / len(verdicts) >= 0.9
    assert sum(naive) / len(naive) > 0.15  # the same looks with a fixed-horizon z-test: peeking inflates alpha


def test_repeated_looks_with_correlated_hits_need_the_design_effect():
    verdicts, _ = _rollouts(seed=11, ratio=1.0, deff=2.5, config=JudgeConfig(overdispersion=2.5))
    assert verdicts.count(O.FAIL) / len(verdicts) <= 0.05
    ignored, _ = _rollouts(seed=11, ratio=1.0, deff=2.5, config=CONFIG)
    assert ignored.count(O.FAIL) / len(ignored) > 0.10


def test_repeated_looks_catch_a_ten_percent_drop():
    verdicts, _ = _rollouts(seed=3, ratio=0.9, deff=1.0, config=CONFIG, n=200)
    assert verdicts.count(O.FAIL) / len(verdicts) >= 0.9


def test_steps_are_judged_on_their_own_counts_and_the_evidence_carried():
    """A canary 10% worse, the split going from 10% to 50% while stable's precision drifts from 5% to 6%: pooled
    counts across the two steps make it look almost as good as stable; per-step counts with the first step's
    statistic carried see it as it is."""
    step1 = (Arm(9_000, 180_000), Arm(900, 20_000))  # 10% canary, stable at 5%
    step2 = (Arm(3_000, 50_000), Arm(2_700, 50_000))  # 50% canary, stable at 6%
    pooled = obs(Arm(12_000, 230_000), Arm(3_600, 70_000), guardrails=())
    assert judge(pooled, CONFIG).outcome is O.PASS  # the bias this avoids
    first = judge(obs(*step1, guardrails=()), CONFIG)
    assert first.statistic is not None
    second = judge(obs(*step2, guardrails=(), carried_statistic=first.statistic), CONFIG)
    assert second.outcome is O.FAIL and "carried" in second.reason
    assert second.statistic == pytest.approx(first.statistic + evidence(*step2, CONFIG).statistic, abs=1e-3)
    assert judge(obs(carried_statistic=math.nan), CONFIG).outcome is O.ERROR


def test_an_unfit_canary_is_an_error_with_its_own_reason():
    obs = Observation(None, None, timedelta(minutes=5), (), Source.UNFIT, "canary unhealthy: 0/2 pod(s) ready")
    v = judge(obs, JudgeConfig())
    assert v.outcome is Outcome.ERROR and v.reason == "canary unhealthy: 0/2 pod(s) ready"


def test_a_tolerated_breach_neither_fails_nor_passes():
    arms = (Arm(hits=5000, trials=100_000), Arm(hits=5000, trials=100_000))
    over = Guardrail("error_ratio", 0.2, 0.01, Direction.MAX, tolerated=True)
    v = judge(Observation(*arms, timedelta(hours=1), (over,)), JudgeConfig(min_trials=1000))
    assert v.outcome is Outcome.INCONCLUSIVE and "error_ratio 0.2 over its threshold, tolerated" in v.reason
    fine = Guardrail("error_ratio", 0.001, 0.01, Direction.MAX, tolerated=True)  # tolerated but not over: no effect
    assert judge(Observation(*arms, timedelta(hours=1), (fine,)), JudgeConfig(min_trials=1000)).outcome is Outcome.PASS
