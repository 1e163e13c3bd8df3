"""Is a difference larger than the noise? Seeded bootstrap intervals of a metric and of a paired difference.

The bootstrap resamples *clusters* of holdout rows (by default the events' local date, ``gate.significance
.cluster_by``): rows of one day share its weather, its traffic and its labelling, so they are not independent, and
resampling rows as if they were gives intervals too narrow. One evaluation draws ONE :class:`Resampling`: integer
draw counts, ``resamples`` x ``clusters`` (int32, the classic multinomial bootstrap over clusters), and each row's
weight in a resample is its cluster's count. Every interval of that evaluation (the candidate's, the champion's,
the paired difference's, the fairness groups' and slices') reads the same draws, so the candidate and the champion
are scored on the same resampled days (paired), which removes the variance the two share. The same seed gives
the same interval. ``cluster_by: []`` resamples rows (each row its own cluster: the old row bootstrap).

Metrics are evaluated as *weighted* metrics, so no resample is materialised. Memory is bounded whatever the
number of resamples: the draws take ``4 x resamples x clusters`` bytes (1000 resamples of 14 days: 56 KB; of
13,000 rows in row mode: 52 MB), and where a metric needs per-row weights they are expanded in chunks of at most
``CHUNK_CELLS`` (2**22) resample-row cells, so each temporary is at most 32 MiB of float64 (a few of them for ROC
AUC: about 0.2 GiB at peak). With clusters, ROC AUC and the per-row losses need no expansion at all: they are
exact functions of per-cluster sums (ROC AUC of the clusters x clusters matrix of correctly ordered
positive-negative pairs), so their cost is ``resamples x clusters**2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.config import HIGHER_IS_BETTER
from pipelines.evaluation.metrics import PROBABILITY_EPS, clean

if TYPE_CHECKING:
    import numpy as np

    from pipelines.config import SignificanceSpec

METHOD = "paired bootstrap"  # rows resampled (cluster_by: [])
CHUNK_CELLS = 2**22  # resample x row cells expanded at once: 32 MiB per float64 temporary
# clusters up to this many use the exact per-cluster forms (ROC AUC: a clusters x clusters pair matrix)
MAX_PAIR_CLUSTERS = 2048
LOSSES = ("log_loss", "brier", "mae", "mape", "rmse")


def method_name(cluster_by: tuple[str, ...] | list[str]) -> str:
    """How the resamples were drawn, as the decision record says it."""
    return f"cluster bootstrap by {' and '.join(cluster_by)}" if cluster_by else METHOD


@dataclass(frozen=True)
class Resampling:
    """One evaluation's bootstrap draws: ``counts[r, c]`` is how many times resample ``r`` drew cluster ``c``
    (int32), ``cluster[i]`` the cluster of holdout row ``i``. Row ``i`` weighs ``counts[r, cluster[i]]``."""

    counts: np.ndarray
    cluster: np.ndarray
    seed: int
    cluster_by: tuple[str, ...] = ()

    @property
    def resamples(self) -> int:
        return int(self.counts.shape[0])

    @property
    def clusters(self) -> int:
        return int(self.counts.shape[1])

    @property
    def rows(self) -> int:
        return int(len(self.cluster))

    @property
    def method(self) -> str:
        return method_name(self.cluster_by)

    def subset(self, mask: Any) -> Resampling:
        """The same draws restricted to the rows of ``mask`` (a fairness group, a slice): its rows keep their
        clusters' counts, so a group's interval resamples the same days as the whole holdout's."""
        import numpy as np

        return Resampling(self.counts, self.cluster[np.asarray(mask)], self.seed, self.cluster_by)

    def chunks(self) -> Iterator[np.ndarray]:
        """Per-row integer weights, ``CHUNK_CELLS`` cells at most at a time (consecutive resamples)."""
        step = max(1, CHUNK_CELLS // max(1, self.rows))
        for start in range(0, self.resamples, step):
            yield self.counts[start : start + step][:, self.cluster]

    def record(self) -> dict[str, Any]:
        """What the decision record says about the draws."""
        return {
            "method": self.method,
            "cluster_by": list(self.cluster_by),
            "clusters": self.clusters,
            "resamples": self.resamples,
            "seed": self.seed,
            "draws_bytes": int(self.counts.nbytes),
            "memory_bound": (
                f"draws: int32 resamples x clusters ({self.counts.nbytes} bytes); per-row weights expanded in "
                f"chunks of at most {CHUNK_CELLS} resample-row cells (32 MiB per float64 temporary)"
            ),
        }


def cluster_index(frame: Any, cluster_by: tuple[str, ...] | list[str]) -> np.ndarray:
    """Each row's cluster: the rank of its ``cluster_by`` values among the distinct ones (sorted, so the same
    holdout gives the same numbering and, with the same seed, the same draws)."""
    import numpy as np

    if not cluster_by:
        return np.arange(len(frame))
    return frame.groupby(list(cluster_by), sort=True, dropna=False).ngroup().to_numpy(dtype="int64")


def draw_resampling(
    rows: int,
    resamples: int,
    seed: int,
    cluster: Any = None,
    cluster_by: tuple[str, ...] | list[str] = (),
) -> Resampling:
    """Draw the evaluation's resamples once: ``resamples`` multinomial draws of the clusters (each draws as many
    clusters as there are, with replacement). ``cluster`` holds each row's cluster index (None: every row its own
    cluster, the row bootstrap)."""
    import numpy as np

    index = np.arange(rows) if cluster is None else np.asarray(cluster, dtype="int64").reshape(-1)
    if len(index) != rows:
        raise ValueError(f"{len(index)} cluster indices for {rows} rows")
    clusters = int(index.max()) + 1 if rows else 0
    rng = np.random.default_rng(seed)
    if clusters == 0:
        counts = np.zeros((resamples, 0), dtype="int32")
    elif clusters <= MAX_PAIR_CLUSTERS:
        # few clusters: draw each resample's clusters and count them (the same multinomial counts, and ten
        # times faster than numpy's per-resample multinomial loop for 14 days)
        drawn = rng.integers(0, clusters, size=(resamples, clusters))
        offsets = np.arange(resamples)[:, None] * clusters
        counts = np.bincount((drawn + offsets).ravel(), minlength=resamples * clusters)
        counts = counts.reshape(resamples, clusters).astype("int32")
    else:
        counts = rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=resamples).astype("int32")
    return Resampling(counts, index, seed, tuple(cluster_by) if cluster is not None else ())


def bootstrap_weights(rows: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``rows`` multinomial counts (int32, each row sums to ``rows``): the row bootstrap."""
    return draw_resampling(rows, resamples, seed).counts


def _weighted_roc_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of ``weights`` (ties count one half), vectorised over the resamples."""
    import numpy as np

    order = np.argsort(scores, kind="stable")
    s, labels, w = scores[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    positive = np.add.reduceat(w * labels, starts, axis=1)
    negative = np.add.reduceat(w * (1 - labels), starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positive * (below + 0.5 * negative)).sum(axis=1) / pairs, np.nan)


def weighted_metric(metric: str, y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``metric`` of ``scores`` against ``y`` under each row of ``weights`` (NaN where it is undefined)."""
    import numpy as np

    total = weights.sum(axis=1)
    if metric == "roc_auc":
        return _weighted_roc_auc(y, scores, weights)
    if metric == "pr_auc":
        from sklearn.metrics import average_precision_score

        out = []
        for w in weights:
            keep = w > 0
            labels = y[keep]
            ok = labels.min() != labels.max() if len(labels) else False
            out.append(average_precision_score(labels, scores[keep], sample_weight=w[keep]) if ok else np.nan)
        return np.asarray(out)
    if metric in ("log_loss", "brier"):
        if metric == "log_loss":
            p = np.clip(scores, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
            loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        else:
            loss = (scores - y) ** 2
        return weights @ loss / total
    error = scores - y
    if metric == "rmse":
        return np.sqrt(weights @ error**2 / total)
    if metric == "mae":
        return weights @ np.abs(error) / total
    if metric == "mape":
        if (y == 0).any():
            return np.full(len(weights), np.nan)
        return weights @ np.abs(error / y) / total
    if metric == "r2":
        mean = weights @ y / total
        spread = (weights * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(spread > 0, 1.0 - weights @ error**2 / spread, np.nan)
    raise ValueError(f"no bootstrap for metric {metric!r}; known: {sorted(HIGHER_IS_BETTER)}")


def small_cluster_factor(clusters: int, confidence: float) -> float:
    """How much wider than the percentile interval the interval is made with few clusters: the bootstrap of
    ``clusters`` independent units has the spread of a mean over them times sqrt((K-1)/K) and normal tails,
    where the statistic has about Student-t tails with K-1 degrees of freedom (the usual few-clusters remedy:
    t critical values with G-1 degrees of freedom). So the ends move away from the point value by
    ``t(K-1) / z * sqrt(K / (K-1))`` at the interval's tail: 1.14 for 14 days at 95%, 1.31 at the nightly
    rule's 99.83%, 1.00 for thousands of rows."""
    from scipy.stats import norm, t

    if clusters < 2:
        return 1.0
    quantile = 1.0 - (1.0 - confidence) / 2.0
    return float(t.ppf(quantile, clusters - 1) / norm.ppf(quantile) * (clusters / (clusters - 1)) ** 0.5)


def _interval(
    values: np.ndarray, confidence: float, center: float | None = None, clusters: int | None = None
) -> tuple[float | None, float | None]:
    """The percentile interval of the resampled ``values``; with ``center`` (the point value) and ``clusters``,
    its ends moved away from the center by :func:`small_cluster_factor`."""
    import numpy as np

    finite = values[np.isfinite(values)]
    if len(finite) < max(10, len(values) // 2):  # most resamples undefined: no credible interval
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    if center is not None and clusters is not None:
        factor = small_cluster_factor(clusters, confidence)
        low, high = center - factor * (center - low), center + factor * (high - center)
    return clean(low), clean(high)


def _by_cluster(values: np.ndarray, resampling: Resampling) -> np.ndarray:
    import numpy as np

    return np.bincount(resampling.cluster, weights=values, minlength=resampling.clusters)


def _cluster_roc_auc(y: np.ndarray, scores: np.ndarray, resampling: Resampling) -> np.ndarray:
    """ROC AUC under each resample from per-cluster counts: ``pairs[c, d]`` counts the positives of cluster
    ``c`` scored above negatives of cluster ``d`` (ties one half), so a resample's correctly ordered pairs are
    ``w @ pairs @ w`` (w: its cluster counts). Exact, the same value as :func:`_weighted_roc_auc`."""
    import numpy as np

    k = resampling.clusters
    order = np.argsort(scores, kind="stable")
    s, labels, cluster = scores[order], y[order], resampling.cluster[order]
    new_group = np.r_[True, s[1:] != s[:-1]]
    groups = int(new_group.sum())
    cell = (np.cumsum(new_group) - 1) * k + cluster  # (tie group, cluster) of each row
    positive = np.bincount(cell, weights=labels, minlength=groups * k).reshape(groups, k)
    negative = np.bincount(cell, weights=1 - labels, minlength=groups * k).reshape(groups, k)
    below = np.cumsum(negative, axis=0) - negative  # negatives with a lower score, by cluster
    pairs = positive.T @ (below + 0.5 * negative)
    w = resampling.counts.astype("float64")
    ordered = ((w @ pairs) * w).sum(axis=1)
    total = (w @ positive.sum(axis=0)) * (w @ negative.sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, ordered / total, np.nan)


def resampled_metric(metric: str, y: np.ndarray, scores: np.ndarray, resampling: Resampling) -> np.ndarray:
    """``metric`` under each resample of ``resampling`` (NaN where undefined). With clusters, ROC AUC and the
    per-row losses come from per-cluster sums (``resamples x clusters**2`` work); otherwise the per-row weights
    are expanded in chunks of ``CHUNK_CELLS`` cells, so memory does not grow with the resamples."""
    import numpy as np

    if resampling.rows != len(y):
        raise ValueError(f"the resampling has {resampling.rows} rows, the metric {len(y)}")
    clustered = resampling.clusters <= MAX_PAIR_CLUSTERS and resampling.clusters * len(y) <= 16 * CHUNK_CELLS
    # the pair matrix costs resamples x clusters**2, the expanded weights about resamples x rows x 10 (a sort):
    # days, yes; rows resampled as their own clusters (a small fairness group), no
    if clustered and metric == "roc_auc" and resampling.clusters**2 <= 8 * len(y):
        return _cluster_roc_auc(y, scores, resampling)
    if clustered and metric in LOSSES and not (metric == "mape" and (y == 0).any()):
        error = scores - y
        if metric == "log_loss":
            p = np.clip(scores, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
            loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        elif metric in ("brier", "rmse"):
            loss = error**2
        elif metric == "mae":
            loss = np.abs(error)
        else:
            loss = np.abs(error / y)
        w = resampling.counts.astype("float64")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = w @ _by_cluster(loss, resampling) / (w @ _by_cluster(np.ones(len(y)), resampling))
        return np.sqrt(mean) if metric == "rmse" else mean
    return np.concatenate([weighted_metric(metric, y, scores, w) for w in resampling.chunks()])


def _point(metric: str, y: np.ndarray, scores: np.ndarray) -> float | None:
    """The metric on the holdout itself. ROC AUC by the bootstrap's own formula under unit weights (the same
    value as scikit-learn's, ties one half, without its input checks: the gate's null simulation calls this
    some 12,000 times); other metrics by ``metrics.model_metrics``."""
    import numpy as np

    from pipelines.evaluation.metrics import model_metrics

    if metric == "roc_auc" and np.isfinite(scores).all():
        return clean(_weighted_roc_auc(y, scores, np.ones((1, len(y))))[0]) if len(y) else None
    return model_metrics(y, scores, [metric])[metric]


def metric_interval(
    metric: str,
    y: Any,
    scores: Any,
    *,
    resamples: int,
    confidence: float,
    seed: int,
    weights: np.ndarray | None = None,
    resampling: Resampling | None = None,
) -> dict[str, Any]:
    """The metric and its percentile bootstrap interval: ``{"value", "low", "high"}``. ``resampling``: the
    evaluation's draws (restricted to these rows); without it (and without ``weights``) rows are resampled with
    ``seed``."""
    import numpy as np

    from pipelines.evaluation.metrics import model_metrics

    y = np.asarray(y, dtype="float64").reshape(-1)
    scores = np.asarray(scores, dtype="float64").reshape(-1)
    value = model_metrics(y, scores, [metric])[metric]
    if len(y) == 0 or value is None:
        return {"value": value, "low": None, "high": None}
    if weights is not None and resampling is None:
        values = weighted_metric(metric, y, scores, weights)
    else:
        values = resampled_metric(metric, y, scores, resampling or draw_resampling(len(y), resamples, seed))
    draws_clusters = None if resampling is None else resampling.clusters
    low, high = _interval(values, confidence, value, draws_clusters)
    return {"value": value, "low": low, "high": high}


def paired_difference(
    metric: str,
    y: Any,
    candidate: Any,
    champion: Any,
    *,
    resamples: int,
    confidence: float,
    seed: int,
    resampling: Resampling | None = None,
) -> dict[str, Any]:
    """Candidate minus champion on the same rows, signed so that positive is an improvement (the metric's better
    direction), with its paired bootstrap interval at ``confidence`` and everything needed to repeat it.
    ``resampling``: the evaluation's draws (by cluster); without it rows are resampled with ``seed``."""
    import numpy as np

    y = np.asarray(y, dtype="float64").reshape(-1)
    a = np.asarray(candidate, dtype="float64").reshape(-1)
    b = np.asarray(champion, dtype="float64").reshape(-1)
    direction = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    value_a, value_b = _point(metric, y, a), _point(metric, y, b)
    draws = resampling or draw_resampling(len(y), resamples, seed)
    out: dict[str, Any] = {
        "metric": metric,
        "candidate": value_a,
        "champion": value_b,
        "difference": None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "resamples": draws.resamples,
        "seed": draws.seed,
        "rows": len(y),
        "method": draws.method,
        "clusters": draws.clusters,
    }
    if value_a is None or value_b is None or not np.isfinite(a).all() or not np.isfinite(b).all():
        return out
    differences = direction * (resampled_metric(metric, y, a, draws) - resampled_metric(metric, y, b, draws))
    difference = clean(direction * (value_a - value_b))
    low, high = _interval(differences, confidence, difference, draws.clusters)
    return out | {"difference": difference, "low": low, "high": high}


# --- how many tests share the error budget -------------------------------------------------------------------
SINGLE_TEST = "single test"
NIGHTLY_BONFERRONI = "nightly bonferroni"
NIGHTLY_UNCORRECTED = "nightly uncorrected"
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = {
    **{
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    **{d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}


def _cron_field(text: str, low: int, high: int) -> set[int]:
    """The values a cron field (``*``, values, names, ranges, steps, lists) allows."""
    values: set[int] = set()
    for part in text.lower().split(","):
        base, _, step = part.partition("/")
        if base in ("*", "?"):
            start, end = low, high
        else:
            first, _, last = base.partition("-")
            start = int(_CRON_NAMES.get(first, first))
            end = int(_CRON_NAMES.get(last, last)) if last else (high if step else start)
        values.update(range(start, end + 1, int(step) if step else 1))
    return values


def runs_per_month(expression: str) -> int:
    """The most runs the five-field cron ``expression`` fires in one calendar month, over 28 years (every weekday
    alignment of every month length). Pure Python: the gate runs in images without croniter."""
    from datetime import date, timedelta

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expression!r} does not have 5 fields")
    minutes, hours, days, months, weekdays = (
        _cron_field(text, low, high) for text, (low, high) in zip(fields, _CRON_RANGES, strict=True)
    )
    weekdays = {d % 7 for d in weekdays}  # 7 is Sunday too
    restricted_day, restricted_weekday = fields[2] not in ("*", "?"), fields[4] not in ("*", "?")
    per_day = len(minutes) * len(hours)
    most, count, current = 0, 0, (2001, 1)
    day = date(2001, 1, 1)
    while day.year < 2029:
        if (day.year, day.month) != current:
            most, count, current = max(most, count), 0, (day.year, day.month)
        by_day, by_weekday = day.day in days, (day.weekday() + 1) % 7 in weekdays
        # cron: when both day fields are restricted a day matching either fires; else both must match
        hit = (by_day or by_weekday) if restricted_day and restricted_weekday else (by_day and by_weekday)
        count += per_day if hit and day.month in months else 0
        day += timedelta(days=1)
    return max(most, count)


def change_rule(spec: SignificanceSpec, mode: str | None, nightly_schedule: str | None) -> dict[str, Any]:
    """The error-rate rule of a change check: the confidence its interval must have and the resamples it draws.

    A monthly (full) run is one test: ``spec.confidence``. A nightly refresh (train mode ``refresh``: the nightly
    DAG, or a manual refresh) retests an almost identical refit on a holdout overlapping the previous night's, up
    to N times a month (N = :func:`runs_per_month` of ``schedules.train_nightly``); under
    ``spec.nightly: bonferroni`` those N tests share one error budget ``alpha = 1 - confidence``: each uses
    ``1 - alpha / N``, so the chance that any night of the month promotes a candidate no better than the champion
    is at most alpha whatever the dependence between the nights. The interval's tails then hold ``alpha / 2N`` of
    the resamples, so at least ``4N / alpha`` resamples are drawn (two beyond each end of the interval)."""
    import math

    alpha = 1.0 - spec.confidence
    base = {"confidence": spec.confidence, "resamples": spec.resamples, "tests_per_month": 1, "alpha": alpha}
    if mode != "refresh" or not nightly_schedule:
        return base | {
            "rule": SINGLE_TEST,
            "text": f"one test per training run at confidence {spec.confidence}",
        }
    tests = runs_per_month(nightly_schedule)
    if spec.nightly == "uncorrected" or tests <= 1:
        return base | {
            "rule": NIGHTLY_UNCORRECTED,
            "tests_per_month": tests,
            "text": f"nightly test at confidence {spec.confidence}, uncorrected for the month's {tests} tests",
        }
    confidence = 1.0 - alpha / tests
    return base | {
        "rule": NIGHTLY_BONFERRONI,
        "confidence": confidence,
        "resamples": max(spec.resamples, math.ceil(4 * tests / alpha)),
        "tests_per_month": tests,
        "text": (
            f"Bonferroni over the month's nightly tests: schedule {nightly_schedule!r} allows {tests} a month, "
            f"which share alpha {alpha:.3g}: each uses confidence 1 - {alpha:.3g}/{tests} = {confidence:.5f}"
        ),
    }


WORSE = "worse"
WITHIN_NOISE = "within the noise"
CLEARS = "clears min_delta"


def change_reading(low: Any, high: Any, min_delta: Any = 0.0, tolerance: float = 1e-12) -> str | None:
    """How the interval ``[low, high]`` of an improvement (positive = the candidate is better, in the metric's
    better direction) reads against zero and ``min_delta``: ``CLEARS`` when its lower bound reaches
    ``min_delta`` (the change check passes), ``WORSE`` when the whole interval lies below zero (the candidate is
    worse than the champion), else ``WITHIN_NOISE`` (it straddles zero or ``min_delta``, or lies between them:
    not shown to beat the champion by ``min_delta``); None without an interval."""
    from pipelines.evaluation.metrics import is_missing

    if is_missing(low) or is_missing(high):
        return None
    delta = 0.0 if is_missing(min_delta) else float(min_delta)
    if float(low) >= delta - tolerance:
        return CLEARS
    if float(high) < 0.0:
        return WORSE
    return WITHIN_NOISE


def direction_words(metric: str) -> tuple[str, str]:
    """``(better, worse)``: what a better and a worse value of ``metric`` is, e.g. ``("lower", "higher")`` for
    an error such as RMSE, MAE or log loss."""
    return ("higher", "lower") if HIGHER_IS_BETTER.get(metric, True) else ("lower", "higher")


def interval(
    values: np.ndarray, confidence: float, center: float | None = None, clusters: int | None = None
) -> tuple[float | None, float | None]:
    """The bootstrap interval of resampled ``values`` as every interval of the gate is made (percentile, widened
    for few clusters): for callers outside this module, such as monitoring."""
    return _interval(values, confidence, center, clusters)


def expected_roc_auc_per_draw(
    probabilities: Iterable[np.ndarray], scores: Any, resampling: Resampling
) -> np.ndarray:
    """The expected ROC AUC (as :func:`expected_roc_auc`) under each resample ``r`` of ``resampling`` with its
    own calibrated probabilities, the ``r``-th array ``probabilities`` yields, for rows ranked by ``scores``
    (sorted once for every draw)."""
    import numpy as np

    s = np.asarray(scores, dtype="float64").reshape(-1)
    out = np.full(resampling.resamples, np.nan)
    if len(s) == 0:
        return out
    k = resampling.clusters
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    new_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    groups = int(new_group.sum())
    cell = (np.cumsum(new_group) - 1) * k + resampling.cluster[order]
    for r, probability in enumerate(probabilities):
        p = np.clip(np.asarray(probability, dtype="float64")[order], 0.0, 1.0)
        positive = np.bincount(cell, weights=p, minlength=groups * k).reshape(groups, k)
        negative = np.bincount(cell, weights=1 - p, minlength=groups * k).reshape(groups, k)
        below = np.cumsum(negative, axis=0) - negative
        pairs = positive.T @ (below + 0.5 * negative)
        w = resampling.counts[r].astype("float64")
        total = (w @ positive.sum(axis=0)) * (w @ negative.sum(axis=0))
        out[r] = (w @ pairs @ w) / total if total > 0 else np.nan
    return out


def expected_roc_auc(
    probability: Any, scores: Any, resampling: Resampling
) -> tuple[float | None, np.ndarray]:
    """The ROC AUC that calibrated ``probability`` of being positive implies for rows ranked by ``scores``
    (confidence-based performance estimation, as NannyML's CBPE): each row counts as ``probability`` of a
    positive and ``1 - probability`` of a negative. Returns the point value and its value under each resample
    (the cluster pair formula of the gate's ROC AUC, with soft labels)."""
    import numpy as np

    p = np.clip(np.asarray(probability, dtype="float64").reshape(-1), 0.0, 1.0)
    s = np.asarray(scores, dtype="float64").reshape(-1)
    if len(p) == 0:
        return None, np.full(resampling.resamples, np.nan)
    whole = Resampling(np.ones((1, resampling.clusters), dtype="int32"), resampling.cluster, resampling.seed)
    point = _cluster_roc_auc(p, s, whole)[0]
    return clean(point), _cluster_roc_auc(p, s, resampling)
