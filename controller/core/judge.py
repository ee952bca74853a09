"""Canary verdict from raw counts and guardrail readings: PASS / FAIL / INCONCLUSIVE / NO_DATA / ERROR, with why.

The test is Wald's sequential probability ratio test (SPRT) of r = p_canary / p_stable between two simple
hypotheses, r_good = 1 - tolerance + indifference (the canary is fine) and r_bad = 1 - tolerance - indifference
(it is too bad), computed on the canary's share of all hits given their total: the conditional-Poisson form, in
which the unknown stable precision cancels. Its likelihood ratio is a supermartingale for every r >= r_good, and
its inverse for every r <= r_bad, so by Ville's inequality P(ever FAIL | r >= r_good) <= alpha and
P(ever PASS | r <= r_bad) <= beta however often it is looked at (exactly for Poisson counts under a steady
traffic split; up to the approximations below otherwise), with no look schedule and no alpha spending. By the
Wald-Wolfowitz theorem no test with the same two error rates needs less traffic on average at either hypothesis,
about half the n of the matching fixed-horizon test; a mixture SPRT (Johari et al.'s always-valid p-values)
pays a log factor for not naming the alternative, and two non-inferiority tests meeting at the margin must tell
apart effects half as large, about four times the traffic. The price is the indifference zone (r_bad, r_good)
around the margin 1 - tolerance: inside it neither error is bounded and the verdict may stay INCONCLUSIVE until
the step's deadline.

Correlated trials. Slots of one request are clicked (or not) together, so hits vary more than a Poisson or
binomial count of slots would. The log-likelihood ratio is divided by the dispersion phi = Var(hits per unit) /
E(hits per unit) (quasi-likelihood: exact for the Gaussian limit), with phi taken, in order of preference, from
  1. `JudgeConfig.overdispersion` (a design effect D >= 1 measured offline: variance relative to independent
     slots; phi = D * (1 - p)), when set;
  2. the data, when the arms report `units` (requests) and `hits_sq` (the sum over requests of hits squared,
     e.g. from a Prometheus histogram of clicks per request): the empirical dispersion of hits per request, the
     larger of the two arms' (the small arm's estimate is noisy early), never below independent slots;
  3. `units` alone: the worst case for trials/units slots per unit (D = trials/units, every slot of a request
     clicked alike), valid for any correlation but slow;
  4. nothing: D = 1, independent slots, which understates the variance when trials are correlated.

Everything here is pure: counts, readings and the elapsed time come in, a Verdict goes out; no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from controller.core.durations import format_duration


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NO_DATA = "no_data"
    ERROR = "error"


class Source(StrEnum):
    """What the metrics source said about this evaluation's readings."""

    OK = "ok"
    NO_DATA = "no_data"  # the queries answered with no series
    ERROR = "error"  # the source was unreachable or answered with an error
    UNFIT = "unfit"  # the canary itself is not fit to be judged now (pods not ready, another image)


class Direction(StrEnum):
    MAX = "max"  # the reading must stay at or below the threshold (error rate, p99 latency)
    MIN = "min"  # the reading must stay at or above the threshold


@dataclass(frozen=True)
class Arm:
    """Counts of one arm since the step started (counter now minus counter at the step's start).

    hits/trials: e.g. slots clicked / slots served, so precision@k = hits / trials.
    units: optional number of independent units the trials come in (requests; k slots each).
    hits_sq: optional sum over units of (hits in the unit) squared; with `units`, lets the judge measure how
    much more hits vary than independent trials would.
    """

    hits: float
    trials: float
    units: float | None = None
    hits_sq: float | None = None


@dataclass(frozen=True)
class Guardrail:
    """One canary reading checked against a fixed threshold; value None (or NaN) means the query had no data."""

    name: str
    value: float | None
    threshold: float
    direction: Direction = Direction.MAX
    # Over its threshold, but in fewer looks in a row than its limit: no FAIL yet (one noisy reading from a cold
    # pod is not a verdict), and no PASS while it lasts.
    tolerated: bool = False


@dataclass(frozen=True)
class Observation:
    stable: Arm | None
    canary: Arm | None
    elapsed: timedelta  # time since the step started, as measured by the caller
    guardrails: tuple[Guardrail, ...] = ()
    source: Source = Source.OK
    detail: str = ""  # what the source said when it was not OK
    # Sum of the final statistics of the earlier steps of the same analysis. Log-likelihood ratios of disjoint
    # stretches of traffic add up, so judging each step on its own counts and carrying the sum keeps the test
    # one sequential test across steps. Cumulative counts across steps do not: when the traffic split changes
    # while the base precision drifts (time of day), the pooled ratio is biased.
    carried_statistic: float = 0.0


@dataclass(frozen=True)
class JudgeConfig:
    """tolerance: the canary is acceptable when p_c >= (1 - tolerance) * p_s; the verdicts pivot there.
    indifference: half-width of the band around that margin where neither error is bounded:
        alpha bounds P(FAIL) for a canary with p_c >= (1 - tolerance + indifference) * p_s,
        beta bounds P(PASS) for a canary with p_c <= (1 - tolerance - indifference) * p_s.
    min_trials, min_duration: no PASS before each arm has this many trials and the step is this old.
    overdispersion: design effect D (variance of hits relative to independent trials), or None to estimate
        it from `units`/`hits_sq` when the arms report them (see the module docstring).
    """

    tolerance: float = 0.05
    indifference: float = 0.05
    alpha: float = 0.05
    beta: float = 0.05
    min_trials: float = 1000
    min_duration: timedelta = timedelta(minutes=5)
    overdispersion: float | None = None

    def __post_init__(self) -> None:
        def bad(why: str) -> ValueError:
            return ValueError(f"judge config: {why}")

        for name in ("tolerance", "indifference", "alpha", "beta", "min_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number, got {value!r}")
        if not 0 <= self.tolerance < 1:
            raise bad("tolerance must be in [0, 1)")
        if self.indifference <= 0:
            raise bad("indifference must be > 0 (a sequential test needs a gap between its hypotheses)")
        if self.bad_ratio <= 0:
            raise bad("tolerance + indifference must stay below 1")
        if not 0 < self.alpha < 0.5 or not 0 < self.beta < 0.5:
            raise bad("alpha and beta must be in (0, 0.5)")
        if self.min_trials < 0 or self.min_duration < timedelta(0):
            raise bad("min_trials and min_duration must not be negative")
        if self.overdispersion is not None and not (
            isinstance(self.overdispersion, (int, float)) and 1 <= self.overdispersion < math.inf
        ):
            raise bad("overdispersion must be a finite number >= 1 (1 = independent trials)")

    @property
    def good_ratio(self) -> float:
        return 1 - self.tolerance + self.indifference

    @property
    def bad_ratio(self) -> float:
        return 1 - self.tolerance - self.indifference

    @property
    def fail_above(self) -> float:
        return math.log(1 / self.alpha)

    @property
    def pass_below(self) -> float:
        return math.log(self.beta)


@dataclass(frozen=True)
class Evidence:
    """The sequential statistic for one pair of arms.

    statistic: log-likelihood ratio of "canary at bad_ratio" over "canary at good_ratio", divided by the
        dispersion: positive favours FAIL, negative favours PASS.
    ratio: observed p_c / p_s (None when stable has no hits).
    design_effect: the variance inflation used, relative to independent trials.
    dispersion_from: "config", "data", "worst_case" or "none" (the rule of the module docstring that applied
        to the canary arm).
    """

    statistic: float
    ratio: float | None
    design_effect: float
    dispersion_from: str


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str  # one sentence
    statistic: float | None = None
    threshold: float | None = None  # the bound crossed (FAIL, PASS) or the nearer one (INCONCLUSIVE)
    ratio: float | None = None
    design_effect: float | None = None


def judge(obs: Observation, config: JudgeConfig) -> Verdict:
    """The verdict for the counts so far. Order: source error, guardrail breach, missing or garbled counts,
    FAIL on evidence, guardrail without data, PASS (only past the minimums), else INCONCLUSIVE."""
    refused = _unusable(obs)
    if refused is not None:
        return refused
    assert obs.stable is not None and obs.canary is not None
    ev = evidence(obs.stable, obs.canary, config)
    return _weigh(obs, config, ev.statistic + obs.carried_statistic, ev.ratio, ev.design_effect)


def _unusable(obs: Observation) -> Verdict | None:
    """ERROR, FAIL on a guardrail, or NO_DATA before any evidence is weighed; None when the counts can be."""
    if obs.source is Source.ERROR:
        return Verdict(Outcome.ERROR, f"metrics source failed: {obs.detail or 'no detail'}")
    if obs.source is Source.UNFIT:
        return Verdict(Outcome.ERROR, obs.detail or "the canary is not fit to be judged")
    for g in obs.guardrails:
        if not _has_value(g.threshold):
            return Verdict(Outcome.ERROR, f"guardrail {g.name} has no usable threshold ({g.threshold!r})")
        if _has_value(g.value) and breached(g) and not g.tolerated:
            op = ">" if g.direction is Direction.MAX else "<"
            return Verdict(Outcome.FAIL, f"guardrail {g.name} breached: {g.value:g} {op} {g.threshold:g}")
    if obs.source is Source.NO_DATA:
        return Verdict(Outcome.NO_DATA, f"metrics source returned no data: {obs.detail or 'no series'}")
    if obs.elapsed < timedelta(0):
        return Verdict(Outcome.ERROR, f"elapsed time is negative ({obs.elapsed}); the step's start is wrong")
    if not _has_value(obs.carried_statistic) or math.isinf(obs.carried_statistic):
        return Verdict(Outcome.ERROR, f"carried statistic is {obs.carried_statistic!r}, not a finite number")
    for name, arm in (("stable", obs.stable), ("canary", obs.canary)):
        problem = _check_arm(name, arm)
        if problem is not None:
            return problem
    return None


def _weigh(obs: Observation, config: JudgeConfig, stat: float, ratio: float | None, deff: float) -> Verdict:
    """FAIL on evidence; else what keeps a PASS back (a guardrail without data or tolerated over its bound,
    too few trials, too young a step); else PASS or INCONCLUSIVE."""
    assert obs.stable is not None and obs.canary is not None
    seen = _describe(obs.stable, obs.canary, ratio)
    margin = 1 - config.tolerance
    llr = f"log-LR {stat:.2f}" + (f" with {obs.carried_statistic:+.2f} carried" if obs.carried_statistic else "")

    def verdict(outcome: Outcome, reason: str, threshold: float | None) -> Verdict:
        return Verdict(outcome, reason, round(stat, 4), None if threshold is None else round(threshold, 4),
                       _round(ratio), round(deff, 3))  # fmt: skip

    if stat >= config.fail_above:
        return verdict(Outcome.FAIL, f"{seen}: the canary is below the {margin:.2f}x margin ({llr} >= "
                       f"{config.fail_above:.2f} for {config.bad_ratio:.2f}x over {config.good_ratio:.2f}x stable)",
                       config.fail_above)  # fmt: skip
    missing = [g.name for g in obs.guardrails if not _has_value(g.value)]
    if missing:
        return verdict(Outcome.NO_DATA, f"guardrail {', '.join(missing)} has no data, so the canary cannot pass "
                       f"({seen})", None)  # fmt: skip
    over = [g for g in obs.guardrails if g.tolerated and _has_value(g.value) and breached(g)]
    if over:
        shown_over = ", ".join(f"{g.name} {g.value:g}" for g in over)
        return verdict(Outcome.INCONCLUSIVE, f"{seen}: guardrail {shown_over} over its threshold, tolerated for now; "
                       "the canary cannot pass while it lasts", config.pass_below)  # fmt: skip
    if stat <= config.pass_below:
        held = _held_back(obs, config)
        if held:
            return verdict(Outcome.INCONCLUSIVE, f"{seen}: evidence favours the canary but {held}", config.pass_below)
        return verdict(Outcome.PASS, f"{seen}: the canary is within the {margin:.2f}x margin ({llr} <= "
                       f"{config.pass_below:.2f} for {config.bad_ratio:.2f}x over {config.good_ratio:.2f}x stable)",
                       config.pass_below)  # fmt: skip
    nearer = config.fail_above if stat > 0 else config.pass_below
    return verdict(Outcome.INCONCLUSIVE, f"{seen}: not enough evidence either way yet ({llr}, FAIL at "
                   f"{config.fail_above:.2f}, PASS at {config.pass_below:.2f})", nearer)  # fmt: skip


def _held_back(obs: Observation, config: JudgeConfig) -> str:
    """Why a PASS must wait for the minimums (trials per arm, then the step's age); "" when it need not."""
    assert obs.stable is not None and obs.canary is not None
    short = [f"{name} has {arm.trials:g} trials" for name, arm in (("stable", obs.stable), ("canary", obs.canary))
             if arm.trials < config.min_trials]  # fmt: skip
    if short:
        return f"{' and '.join(short)}, under the minimum {config.min_trials:g}"
    if obs.elapsed < config.min_duration:
        return (f"the step is {format_duration(obs.elapsed)} old, under the minimum "
                f"{format_duration(config.min_duration)}")
    return ""


def evidence(stable: Arm, canary: Arm, config: JudgeConfig) -> Evidence:
    """The SPRT statistic for two arms with valid counts and trials > 0 each (see `judge` for the checks).

    Given H hits in all, each is the canary's with probability pi(r) = r*N_c / (r*N_c + N_s), so
        LLR = h_c * log(r_bad / r_good) - H * log((r_bad*N_c + N_s) / (r_good*N_c + N_s)),
    divided by the dispersion phi = (1 - w) * phi_c + w * phi_s, w = N_c / (N_c + N_s): the variance of
    h_c - pi*H is a (1 - w, w) mix of the arms' dispersions, the canary's weighing most when it is the smaller arm.
    """
    r0, r1 = config.good_ratio, config.bad_ratio
    n_c, n_s = canary.trials, stable.trials
    h_c, h_s = canary.hits, stable.hits
    total = h_c + h_s
    llr = h_c * math.log(r1 / r0) - total * math.log((r1 * n_c + n_s) / (r0 * n_c + n_s))

    p = total / (n_c + n_s)
    q = max(1 - p, 1e-9)
    phi_c, source = _dispersion(canary, stable, config, q)
    phi_s, _ = _dispersion(stable, canary, config, q)
    w = n_c / (n_c + n_s)
    phi = (1 - w) * phi_c + w * phi_s
    ratio = (h_c / n_c) / (h_s / n_s) if h_s > 0 else None
    return Evidence(llr / phi, ratio, phi / q, source)


def _dispersion(arm: Arm, other: Arm, config: JudgeConfig, q: float) -> tuple[float, str]:
    """phi for one arm: Var(hits per unit) / E(hits per unit); q = 1 - pooled precision.

    Measured from the data, an arm's phi is the larger of its own and the other arm's: the small arm's estimate
    is noisy early, and a canary is never assumed to scatter its hits less than stable does (or vice versa).
    An arm without hits has nothing to measure and borrows the other arm's.
    """
    if config.overdispersion is not None:
        return config.overdispersion * q, "config"
    own, theirs = _measured(arm, q), _measured(other, q)
    if own is not None or (theirs is not None and arm.hits == 0 and arm.hits_sq is not None):
        return max(own or 0.0, theirs or 0.0), "data"
    if arm.units is not None:
        return max(arm.trials / arm.units, 1.0) * q, "worst_case"
    return q, "none"


def _measured(arm: Arm, q: float) -> float | None:
    if arm.units is None or arm.hits_sq is None or arm.units < 2 or arm.hits <= 0:
        return None
    u, h = arm.units, arm.hits
    var = max(arm.hits_sq - h * h / u, 0.0) / (u - 1)
    return max(var / (h / u), q)  # never below independent trials


def _check_arm(name: str, arm: Arm | None) -> Verdict | None:
    if arm is None:
        return Verdict(Outcome.NO_DATA, f"no counts for the {name} arm")
    fields = {"hits": arm.hits, "trials": arm.trials, "units": arm.units, "hits_sq": arm.hits_sq}
    for field, value in fields.items():
        if value is None and field in ("units", "hits_sq"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Verdict(Outcome.ERROR, f"{name} {field} is not a number ({value!r})")
        if not math.isfinite(value):
            return Verdict(Outcome.NO_DATA, f"{name} {field} is {value} rather than a count")
        if value < 0:
            return Verdict(
                Outcome.NO_DATA,
                f"{name} {field} went down by {-value:g} since the step started: a counter reset; "
                f"the step needs a new baseline",
            )
    if arm.hits > arm.trials:
        return Verdict(Outcome.ERROR, f"{name} has more hits ({arm.hits:g}) than trials ({arm.trials:g})")
    if arm.units is not None:
        if arm.units > arm.trials or (arm.units == 0 and arm.trials > 0):
            return Verdict(Outcome.ERROR, f"{name} has {arm.units:g} units for {arm.trials:g} trials")
        if arm.hits_sq is not None and arm.units > 0 and arm.hits_sq < arm.hits * arm.hits / arm.units * (1 - 1e-9):
            return Verdict(Outcome.ERROR, f"{name} hits_sq {arm.hits_sq:g} is below hits^2/units")
    if arm.hits_sq is not None and arm.hits_sq < arm.hits * (1 - 1e-9):
        return Verdict(Outcome.ERROR, f"{name} hits_sq {arm.hits_sq:g} is below hits {arm.hits:g}")
    if arm.trials == 0:
        return Verdict(Outcome.NO_DATA, f"the {name} arm served no trials since the step started")
    return None


def _has_value(value: float | None) -> bool:
    """A number that is not NaN (infinities count: histogram_quantile answers +Inf past the last bucket)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def breached(g: Guardrail) -> bool:
    assert g.value is not None
    return g.value > g.threshold if g.direction is Direction.MAX else g.value < g.threshold


def _describe(stable: Arm, canary: Arm, ratio: float | None) -> str:
    p_c, p_s = canary.hits / canary.trials, stable.hits / stable.trials
    shown = f"ratio {ratio:.3f}" if ratio is not None else "stable has no hits"
    return f"canary {p_c:.4f} vs stable {p_s:.4f} ({shown})"
