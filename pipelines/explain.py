"""Model explanation helpers: error cohorts (error analysis) and training-versus-holdout feature distributions.

Error cohorts follow Microsoft's Error Analysis: a shallow decision tree fitted on the holdout rows' errors finds
the cohorts (its leaves) where the model errs most, each described by a rule in the original feature terms. The
data explorer compares every feature's training and holdout distributions, with the population stability index.
Every value returned is JSON-able: Python floats, ints, strings or None, never NaN.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pipelines.metrics import NULL_SLICE, clean

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Z_95 = 1.959963984540054
MAX_ONE_HOT = 30  # categorical values per column the error tree may split on; rarer values are never named
OTHER = "(other)"
TASKS = ("classification", "regression")


def wilson_interval(errors: int, n: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """Wilson score interval of the share ``errors / n``; (None, None) when ``n`` is 0."""
    if n <= 0:
        return None, None
    p = errors / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if errors <= 0 else max(0.0, centre - half)
    high = 1.0 if errors >= n else min(1.0, centre + half)
    return clean(low), clean(high)


def mean_interval(values: np.ndarray, z: float = Z_95) -> tuple[float | None, float | None]:
    """Normal interval ``mean ± z·sd/sqrt(n)`` of non-negative ``values`` (sample sd; the low end clipped at 0)."""
    import numpy as np

    n = len(values)
    if n == 0:
        return None, None
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return clean(max(0.0, mean - half)), clean(mean + half)


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s): {', '.join(map(str, missing))}")


def _as_text(series: pd.Series, null: str | None) -> pd.Series:
    """Values as str; missing values become ``null`` (None keeps them missing)."""
    import pandas as pd

    present = series.notna().to_numpy()
    text = [str(v) if ok else null for v, ok in zip(series.to_numpy(), present, strict=True)]
    return pd.Series(text, index=series.index, dtype=object)


def _numeric(series: pd.Series) -> np.ndarray:
    """float64 values with non-numbers and infinities as NaN."""
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def _fmt(value: float, digits: int = 6) -> str:
    """A short number: ``17.5``, ``3``, ``0.000125``."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


def _design(
    features: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> tuple[np.ndarray, list[tuple[str, str, str | None]]]:
    """The tree's design matrix and what each column is: (kind, feature, one-hot value or None)."""
    import numpy as np

    columns: list[np.ndarray] = []
    meta: list[tuple[str, str, str | None]] = []
    for col in numeric:
        values = _numeric(features[col])
        finite = values[~np.isnan(values)]
        fill = float(np.median(finite)) if len(finite) else 0.0
        columns.append(np.where(np.isnan(values), fill, values))
        meta.append(("numeric", col, None))
    for col in categorical:
        text = _as_text(features[col], NULL_SLICE)
        counts = text.value_counts()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ONE_HOT]
        values = text.to_numpy()
        for value, _ in ranked:
            columns.append((values == value).astype("float64"))
            meta.append(("categorical", col, str(value)))
    if not columns:
        return np.zeros((len(features), 0)), meta
    return np.column_stack(columns), meta


def _rule(conditions: list[tuple[int, bool, float]], meta: list[tuple[str, str, str | None]]) -> str:
    """Readable rule from the path's splits (feature index, went right, threshold), merged per feature."""
    order: list[str] = []
    lower: dict[str, float] = {}  # numeric: x > lower
    upper: dict[str, float] = {}  # numeric: x <= upper
    equal: dict[str, str] = {}
    not_equal: dict[str, list[str]] = {}
    for index, right, threshold in conditions:
        kind, col, value = meta[index]
        if col not in order:
            order.append(col)
        if kind == "numeric":
            if right:
                lower[col] = max(lower.get(col, -math.inf), threshold)
            else:
                upper[col] = min(upper.get(col, math.inf), threshold)
        elif right:
            equal[col] = str(value)
        else:
            not_equal.setdefault(col, [])
            if value not in not_equal[col]:
                not_equal[col].append(str(value))
    parts: list[str] = []
    for col in order:
        if col in lower:
            parts.append(f"{col} > {_fmt(lower[col])}")
        if col in upper:
            parts.append(f"{col} <= {_fmt(upper[col])}")
        if col in equal:
            parts.append(f"{col} = {equal[col]}")
        elif col in not_equal:
            parts.extend(f"{col} != {value}" for value in not_equal[col])
    return " and ".join(parts) if parts else "all rows"


def _leaf_rules(tree: Any, meta: list[tuple[str, str, str | None]]) -> dict[int, str]:
    """Each leaf's node id and its rule."""
    t = tree.tree_
    rules: dict[int, str] = {}
    stack: list[tuple[int, list[tuple[int, bool, float]]]] = [(0, [])]
    while stack:
        node, path = stack.pop()
        left, right = int(t.children_left[node]), int(t.children_right[node])
        if left == right:  # a leaf (both -1)
            rules[node] = _rule(path, meta)
            continue
        feature, threshold = int(t.feature[node]), float(t.threshold[node])
        stack.append((right, [*path, (feature, True, threshold)]))
        stack.append((left, [*path, (feature, False, threshold)]))
    return rules


def error_cohorts(
    features: pd.DataFrame,
    errors: np.ndarray,
    *,
    task: str,
    numeric: list[str],
    categorical: list[str],
    max_depth: int = 3,
    min_rows: int | None = None,
    seed: int = 0,
    top: int = 8,
) -> dict:
    """Cohorts (leaves of a shallow decision tree fitted on the holdout errors) with the highest error.

    Classification: ``errors`` is 0/1 (1 = wrongly decided at the threshold), a cohort's ``error_rate`` is its share
    of errors with a Wilson 95% interval. Regression: ``errors`` are absolute errors, ``error_rate`` is their mean
    with a normal 95% interval. Rows with a non-finite error are left out. Numeric features enter the tree with
    missing values as the column median, categorical ones one-hot (missing as ``(null)``); rules read in the
    original feature terms, e.g. ``dep_hour > 17.5 and carrier = UA and origin != JFK``.
    """
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    _require(features, [*numeric, *categorical], "features")
    err = np.asarray(errors, dtype="float64").reshape(-1)
    if len(err) != len(features):
        raise ValueError(f"errors has {len(err)} values for {len(features)} feature rows")
    keep = np.isfinite(err)
    frame = features if keep.all() else features.iloc[np.flatnonzero(keep)]
    err = err[keep]
    if task == "classification" and not np.isin(err, (0.0, 1.0)).all():
        raise ValueError("classification errors must be 0/1")

    n = len(err)
    result: dict[str, Any] = {
        "method": f"decision tree (depth <= {max_depth}) on the holdout errors",
        "error": "wrongly decided at the decision threshold"
        if task == "classification"
        else "absolute error",
        "overall_error": clean(err.mean()) if n else None,
        "rows": int(n),
        "cohorts": [],
    }
    if n == 0:
        return result

    x, meta = _design(frame, numeric, categorical)
    leaf_min = int(min_rows) if min_rows is not None else max(50, math.ceil(0.02 * n))
    if x.shape[1] == 0 or len(np.unique(err)) < 2:
        leaves = np.zeros(n, dtype="int64")
        rules = {0: "all rows"}
    else:
        if task == "classification":
            tree = DecisionTreeClassifier(
                max_depth=max_depth, min_samples_leaf=max(1, leaf_min), random_state=seed
            )
            tree.fit(x, err.astype("int64"))
        else:
            tree = DecisionTreeRegressor(
                max_depth=max_depth, min_samples_leaf=max(1, leaf_min), random_state=seed
            )
            tree.fit(x, err)
        leaves = tree.apply(x)
        rules = _leaf_rules(tree, meta)

    cohorts = []
    for leaf, rule in rules.items():
        values = err[leaves == leaf]
        rows = len(values)
        if rows == 0:
            continue
        if task == "classification":
            low, high = wilson_interval(int(values.sum()), rows)
        else:
            low, high = mean_interval(values)
        cohorts.append(
            {"rule": rule, "rows": int(rows), "error_rate": clean(values.mean()), "low": low, "high": high}
        )
    cohorts.sort(key=lambda c: (-(c["error_rate"] or 0.0), -c["rows"], c["rule"]))
    result["cohorts"] = cohorts[: max(0, int(top))]
    return result


def psi(expected_shares: list[float], actual_shares: list[float], eps: float = 1e-4) -> float | None:
    """Population stability index ``sum((a - e) * ln(a / e))`` over matching bins, shares clipped at ``eps``.

    None when there are no bins or a share is not finite; ValueError when the bin counts differ.
    """
    import numpy as np

    e = np.asarray(expected_shares, dtype="float64").reshape(-1)
    a = np.asarray(actual_shares, dtype="float64").reshape(-1)
    if len(e) != len(a):
        raise ValueError(f"psi needs matching bins: {len(e)} expected shares, {len(a)} actual shares")
    if len(e) == 0 or not (np.isfinite(e).all() and np.isfinite(a).all()):
        return None
    e, a = np.clip(e, eps, None), np.clip(a, eps, None)
    return clean(np.sum((a - e) * np.log(a / e)))


def _shares(codes: np.ndarray, n_bins: int) -> list[float]:
    """Share of each bin among ``codes`` (all 0.0 when there are none)."""
    import numpy as np

    counts = np.bincount(codes, minlength=n_bins).astype("float64")
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def _missing_share(missing: np.ndarray) -> float:
    return float(missing.mean()) if len(missing) else 0.0


def _numeric_cuts(train: np.ndarray, bins: int) -> list[float]:
    """Cut points from the train quantiles, unique and below the train maximum (none for a constant column)."""
    import numpy as np

    finite = train[~np.isnan(train)]
    if len(finite) == 0 or bins < 2:
        return []
    cuts = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf"))
    return [float(c) for c in cuts if c < finite.max()]


def _numeric_labels(cuts: list[float]) -> list[str]:
    """``<= a``, ``(a, b]``, ..., ``> z``; enough digits to keep the labels distinct."""
    if not cuts:
        return ["all values"]
    for digits in (4, 6, 8, 12, 17):
        text = [_fmt(c, digits) for c in cuts]
        if len(set(text)) == len(text):
            break
    labels = [f"<= {text[0]}"]
    labels += [f"({lo}, {hi}]" for lo, hi in zip(text[:-1], text[1:], strict=True)]
    labels.append(f"> {text[-1]}")
    return labels


def _numeric_feature(train: pd.Series, holdout: pd.Series, bins: int) -> dict:
    import numpy as np

    tr, ho = _numeric(train), _numeric(holdout)
    cuts = _numeric_cuts(tr, bins)
    labels = _numeric_labels(cuts)
    edges = np.asarray(cuts, dtype="float64")

    def side(values: np.ndarray) -> tuple[float, list[float]]:
        present = values[~np.isnan(values)]
        codes = np.searchsorted(edges, present, side="left")  # cuts[i-1] < v <= cuts[i] -> i
        return _missing_share(np.isnan(values)), _shares(codes, len(labels))

    return _feature_entry("numeric", labels, side(tr), side(ho))


def _categorical_feature(train: pd.Series, holdout: pd.Series, top_categories: int) -> dict:
    import numpy as np

    tr, ho = _as_text(train, None), _as_text(holdout, None)
    counts = tr.dropna().value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, int(top_categories))]
    labels = [str(v) for v, _ in ranked] + [OTHER]
    index = {label: i for i, label in enumerate(labels[:-1])}

    def side(values: pd.Series) -> tuple[float, list[float]]:
        missing = values.isna().to_numpy()
        present = values[~missing]
        codes = np.fromiter(
            (index.get(v, len(labels) - 1) for v in present), dtype="int64", count=len(present)
        )
        return _missing_share(missing), _shares(codes, len(labels))

    return _feature_entry("categorical", labels, side(tr), side(ho))


def _feature_entry(
    kind: str, labels: list[str], train: tuple[float, list[float]], holdout: tuple[float, list[float]]
) -> dict:
    has_train, has_holdout = sum(train[1]) > 0, sum(holdout[1]) > 0
    return {
        "kind": kind,
        "train_missing": train[0],
        "holdout_missing": holdout[0],
        "psi": psi(train[1], holdout[1]) if has_train and has_holdout else None,
        "train": {"bins": list(labels), "shares": train[1]},
        "holdout": {"bins": list(labels), "shares": holdout[1]},
    }


def data_explorer(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    numeric: list[str],
    categorical: list[str],
    bins: int = 10,
    top_categories: int = 10,
) -> dict:
    """Training versus holdout distribution of every feature (numeric first, then categorical), with PSI.

    Numeric bins come from the train quantiles with open-ended first and last bins, so holdout values outside the
    train range are counted; categorical bins are the train's ``top_categories`` most frequent values plus
    ``(other)``. Shares are over non-missing values; missing values are reported as ``*_missing`` shares.
    """
    columns = [*numeric, *categorical]
    _require(train, columns, "train")
    _require(holdout, columns, "holdout")
    out = []
    for col in numeric:
        out.append({"feature": col, **_numeric_feature(train[col], holdout[col], bins)})
    for col in categorical:
        out.append({"feature": col, **_categorical_feature(train[col], holdout[col], top_categories)})
    return {"features": out, "train_rows": int(len(train)), "holdout_rows": int(len(holdout))}
