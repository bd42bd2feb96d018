"""Validation-set search for the late-fusion weights of IF-MVSE (Liu et al., Interspeech 2025, Eq. 7).

``Y_pred = sum_i w_i S_i`` over named score sets ``S_i`` (each (N, out): attribute predictions or class scores).
Sec. 3.2: "coarse search (0-1, step 0.1) then fine search (step 0.01)" on the validation set; the reported
weights {0.02, 0.15, 0.01, 0.8, 0.02} sum to 1.

Search, in integer units of ``fine`` (so 0.1 is 10 units and 1.0 is 100 units, no float drift):

1. coarse: every weight in {0, 0.1, ..., 1}. Exhaustive over the grid when it has at most ``max_evals`` points
   (11^5 = 161,051 for the paper's five sets); beyond that, coordinate ascent on the same grid starting from the
   best single score set.
2. fine: every weight within +-0.1 of its coarse value, clipped to [0, 1], step 0.01. Exhaustive when the box has
   at most ``max_evals`` points (21^n: up to 4 sets); otherwise coordinate-wise: sweep over the weights, try all
   21 values of one weight with the others fixed, keep the best, repeat until a sweep brings no gain (at most
   ``max_sweeps``). With ``sum_to_one`` a coordinate move changes a pair (w_i += d, w_j -= d) so the sum stays 1.

Constraint: by default (as the paper reports them, but not forcing it) the weights are free in [0, 1] each; only
the all-zero vector is excluded. ``sum_to_one=True`` restricts both stages to the simplex sum w_i = 1.

Cost: one metric call per candidate. Passing :func:`mean_ccc` itself switches to an exact moment-based CCC
(O(n^2) per candidate, independent of N): the paper's five sets on 32k validation rows take about 5 s.

Ties keep the first candidate met (grid order), so the result is deterministic. A metric value that is NaN counts
as worse than anything.

The search only ever sees validation arrays: :func:`search_weights` takes no test data, and
:func:`fit_and_apply` searches on validation data before it looks at the test scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np

from serkit.errors import ConfigError

Metric = Callable[[np.ndarray, np.ndarray], float]


def mean_ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over attributes of the concordance correlation coefficient; (N, attributes) arrays -> float."""
    from serkit.metrics import ccc

    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    target = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    return float(np.mean([ccc(pred[:, a], target[:, a]) for a in range(pred.shape[1])]))


def unweighted_accuracy(scores: np.ndarray, target: np.ndarray) -> float:
    """UA (mean per-class recall over the classes present in ``target``) of ``argmax`` of scores (N, classes)."""
    pred = np.asarray(scores).argmax(-1)
    target = np.asarray(target, dtype=int)
    classes = np.unique(target)
    return float(np.mean([(pred[target == c] == c).mean() for c in classes]))


def combine(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """``sum_i w_i S_i`` (Eq. 7): ``scores`` ``{name: (N, out)}``, ``weights`` ``{name: float}`` -> (N, out).

    Every weighted name must be in ``scores``; score sets without a weight are ignored.
    """
    missing = [k for k in weights if k not in scores]
    if missing:
        raise KeyError(f"combine: no scores for weighted sets {missing}; have {sorted(scores)}")
    if not weights:
        raise ValueError("combine: no weights")
    total = None
    for name, w in weights.items():
        s = np.asarray(scores[name], dtype=np.float64)
        if total is not None and s.shape != total.shape:
            raise ValueError(f"combine: score set {name!r} has shape {s.shape}, expected {total.shape}")
        total = w * s if total is None else total + w * s
    return total


class _Objective:
    """Metric of ``sum_i (u_i / units) S_i`` for integer weight vectors ``u``, with a cache.

    When ``metric`` is :func:`mean_ccc` itself, CCC is computed from moments instead of the (N, out) prediction:
    with per-attribute means ``mu_i``, covariances ``C_ij`` of the score sets and covariances ``c_i`` with the
    target, ``CCC(w) = 2 w.c / (w'Cw + var y + (w.mu - mean y)^2)`` (population moments, as
    :func:`serkit.metrics.ccc`), which costs O(n^2) per candidate instead of O(N) and gives the same value up to
    rounding. Any other callable (a wrapper of ``mean_ccc`` included) is called on the combined prediction.
    """

    def __init__(self, stack: np.ndarray, targets: np.ndarray, metric: Metric, units: int):
        self.stack, self.targets, self.metric, self.units = stack, targets, metric, units
        self.cache: dict[tuple[int, ...], float] = {}
        self.moments = None
        if metric is mean_ccc:
            n, num = stack.shape[:2]
            s = stack.reshape(n, num, -1)  # (sets, N, attributes)
            y = np.asarray(targets, dtype=np.float64).reshape(num, -1)
            if y.shape[1] != s.shape[2]:
                raise ValueError(f"search_weights: targets have {y.shape[1]} columns, scores {s.shape[2]}")
            mu, my = s.mean(1), y.mean(0)  # (sets, A), (A,)
            sc, yc = s - mu[:, None, :], y - my
            cov = np.einsum("ina,jna->aij", sc, sc) / num  # (A, sets, sets)
            cross = np.einsum("ina,na->ai", sc, yc) / num  # (A, sets)
            self.moments = (mu.T, my, cov, cross, yc.var(0) if num else yc.sum(0))

    def _value(self, w: np.ndarray) -> float:
        if self.moments is None:
            return float(self.metric(np.tensordot(w, self.stack, axes=1), self.targets))
        mu, my, cov, cross, vy = self.moments
        num = 2 * cross @ w
        denom = np.einsum("i,aij,j->a", w, cov, w) + vy + (mu @ w - my) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(denom > 0, num / denom, np.nan)
        return float(per.mean())

    def __call__(self, u: tuple[int, ...]) -> float:
        if u not in self.cache:
            if not any(u):
                value = -np.inf
            else:
                value = self._value(np.asarray(u, dtype=np.float64) / self.units)
                if not np.isfinite(value):
                    value = -np.inf
            self.cache[u] = value
        return self.cache[u]


def _best(objective: _Objective, candidates, best: tuple[tuple[int, ...] | None, float]):
    best_u, best_v = best
    for u in candidates:
        v = objective(u)
        if v > best_v:
            best_u, best_v = u, v
    return best_u, best_v


def _box_candidates(ranges: list[range], total: int | None):
    """All integer vectors in the box (optionally with the given sum), in lexicographic order."""
    if total is None:
        yield from itertools.product(*ranges)
        return
    for head in itertools.product(*ranges[:-1]):
        last = total - sum(head)
        if last in ranges[-1]:
            yield (*head, last)


def _box_size(ranges: list[range], total: int | None) -> int:
    sizes = [len(r) for r in (ranges if total is None else ranges[:-1])]
    return int(np.prod(sizes, dtype=object))


def _coordinate_ascent(objective: _Objective, ranges: list[range], start: tuple[int, ...], total: int | None,
                       max_sweeps: int) -> tuple[tuple[int, ...], float]:
    best_u, best_v = start, objective(start)
    n = len(ranges)
    for _ in range(max_sweeps):
        before = best_v
        if total is None:
            for i in range(n):
                cands = ((*best_u[:i], x, *best_u[i + 1:]) for x in ranges[i])
                best_u, best_v = _best(objective, cands, (best_u, best_v))
        else:
            for i, j in itertools.permutations(range(n), 2):
                def moves(u=best_u, i=i, j=j):
                    for x in ranges[i]:
                        d = x - u[i]
                        if d > 0 and u[j] - d in ranges[j]:
                            v = list(u)
                            v[i], v[j] = x, u[j] - d
                            yield tuple(v)
                best_u, best_v = _best(objective, moves(), (best_u, best_v))
        if best_v <= before:
            break
    return best_u, best_v


def search_weights(val_scores: Mapping[str, np.ndarray], val_targets: np.ndarray, metric: Metric,
                   coarse: float = 0.1, fine: float = 0.01, sum_to_one: bool = False, max_evals: int = 200_000,
                   max_sweeps: int = 20) -> tuple[dict[str, float], float]:
    """Find fusion weights maximising ``metric(combine(val_scores, w), val_targets)`` on the validation set.

    Args:
        val_scores: ``{name: (N, out)}`` validation scores of each score set (same shapes).
        val_targets: validation targets as ``metric`` expects them ((N, attributes) or (N,) class indices).
        metric: ``metric(pred (N, out), targets) -> float``, higher is better (e.g. :func:`mean_ccc`,
            :func:`unweighted_accuracy`).
        coarse: coarse step (paper: 0.1), a multiple of ``fine``.
        fine: fine step (paper: 0.01); the refinement box is +-``coarse`` around each coarse weight.
        sum_to_one: restrict to sum w_i = 1 (default: free weights in [0, 1], all-zero excluded).
        max_evals: largest grid searched exhaustively; larger grids are searched coordinate-wise.
        max_sweeps: cap on coordinate-ascent sweeps.

    Returns:
        ``({name: weight}, best validation metric)``; weights are multiples of ``fine`` in [0, 1].
    """
    names = list(val_scores)
    if not names:
        raise ConfigError("search_weights: no score sets")
    units = round(1 / fine)
    step = round(coarse / fine)
    if abs(units * fine - 1) > 1e-9 or abs(step * fine - coarse) > 1e-9 or step < 1:
        raise ConfigError(f"search_weights: 1 and coarse={coarse} must be whole multiples of fine={fine}")
    stack = np.stack([np.asarray(val_scores[k], dtype=np.float64) for k in names])
    objective = _Objective(stack, np.asarray(val_targets), metric, units)
    total = units if sum_to_one else None
    n = len(names)

    # Coarse stage.
    coarse_ranges = [range(0, units + 1, step)] * n
    if _box_size(coarse_ranges, total) <= max_evals:
        best_u, best_v = _best(objective, _box_candidates(coarse_ranges, total), (None, -np.inf))
    else:
        one_hots = [tuple(units if j == i else 0 for j in range(n)) for i in range(n)]
        start, _ = _best(objective, one_hots, (None, -np.inf))
        best_u, best_v = _coordinate_ascent(objective, coarse_ranges, start or one_hots[0], total, max_sweeps)
    if best_u is None:
        raise ValueError("search_weights: the metric was not finite for any weight vector")

    # Fine stage: +-coarse around each coarse weight, clipped to [0, 1].
    fine_ranges = [range(max(0, c - step), min(units, c + step) + 1) for c in best_u]
    if _box_size(fine_ranges, total) <= max_evals:
        best_u, best_v = _best(objective, _box_candidates(fine_ranges, total), (best_u, best_v))
    else:
        best_u, best_v = _coordinate_ascent(objective, fine_ranges, best_u, total, max_sweeps)
    return {k: round(u * fine, 10) for k, u in zip(names, best_u)}, best_v


def fit_and_apply(val_scores: Mapping[str, np.ndarray], val_targets: np.ndarray,
                  test_scores: Mapping[str, np.ndarray], metric: Metric,
                  **search_kw) -> tuple[dict[str, float], np.ndarray]:
    """Search weights on validation data only, then combine the test scores with them.

    Returns ``(weights, test prediction (N_test, out))``. ``test_scores`` is used only by :func:`combine`.
    """
    weights, _ = search_weights(val_scores, val_targets, metric, **search_kw)
    return weights, combine(test_scores, weights)
