"""Accuracy, precision, recall and F1 from labels and predictions, with numpy only.

For users who want these logged the same way in every run: `run.log(classification_metrics(y, p,
average="macro", prefix="val/"), step=step)`. Definitions match scikit-learn's
(`precision_recall_fscore_support` with `zero_division=0`): a ratio whose denominator is zero is 0.0
(e.g. precision of a class never predicted), without a warning. Labels are the union of those in
y_true and y_pred, as in scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

AVERAGES = ("binary", "macro", "weighted")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(numerator.shape, dtype=float)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(y_true: Any, y_pred: Any, average: str = "binary", pos_label: Any = 1,
                           prefix: str = "") -> dict[str, float]:
    """{prefix}accuracy, precision, recall and f1.

    average="binary": precision/recall/F1 of `pos_label` (at most two distinct labels);
    "macro": unweighted mean over labels; "weighted": mean weighted by each label's support in y_true.
    Inputs are array-likes of equal size (flattened). Misuse (unknown average, sizes differ, more than
    two labels for "binary") raises ValueError: it is a bug in the calling code, found on first call.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    truth, predicted = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"y_true has {truth.size} labels, y_pred {predicted.size}")
    labels = np.union1d(truth, predicted)
    if average == "binary" and (labels.size > 2 or (labels.size == 2 and pos_label not in labels)):
        raise ValueError(f"average='binary' needs two labels including pos_label={pos_label!r}, found "
                         f"{labels.tolist()[:10]}; use average='macro' or 'weighted' for more classes")
    k = labels.size
    confusion = np.bincount(np.searchsorted(labels, truth) * k + np.searchsorted(labels, predicted),
                            minlength=k * k).reshape(k, k)  # rows: truth, columns: prediction
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    precision = _ratio(tp, confusion.sum(axis=0))
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    accuracy = float(tp.sum() / truth.size) if truth.size else 0.0
    if average == "binary":
        where = np.flatnonzero(labels == pos_label)
        p, r, f = (float(x[where[0]]) if where.size else 0.0 for x in (precision, recall, f1))
    elif average == "macro":
        p, r, f = (float(x.mean()) if k else 0.0 for x in (precision, recall, f1))
    else:
        total = support.sum()
        p, r, f = (float((x * support).sum() / total) if total else 0.0 for x in (precision, recall, f1))
    return {f"{prefix}accuracy": accuracy, f"{prefix}precision": p, f"{prefix}recall": r, f"{prefix}f1": f}
