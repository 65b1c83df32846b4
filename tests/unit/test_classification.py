"""Classification metrics against hand-computed values (and scikit-learn when it is installed)."""

from __future__ import annotations

import pytest

import numpy as np

from trainmon.agent.classification import classification_metrics

# Binary: tp=2 (idx 0, 4), fp=1 (idx 2), fn=1 (idx 3), tn=2 (idx 1, 5).
BINARY_TRUE = [1, 0, 0, 1, 1, 0]
BINARY_PRED = [1, 0, 1, 0, 1, 0]

# Three classes. Confusion (rows truth, columns prediction):
#        0  1  2
#   0 [  2  1  0 ]   support 3
#   1 [  0  1  1 ]   support 2
#   2 [  1  0  1 ]   support 2
MULTI_TRUE = [0, 0, 0, 1, 1, 2, 2]
MULTI_PRED = [0, 0, 1, 1, 2, 0, 2]
# precision: 0: 2/3, 1: 1/2, 2: 1/2; recall: 0: 2/3, 1: 1/2, 2: 1/2; f1 = precision (p == r per class)


def approx(values: dict[str, float]) -> dict[str, float]:
    return {key: pytest.approx(value) for key, value in values.items()}


def test_binary() -> None:
    assert classification_metrics(BINARY_TRUE, BINARY_PRED) == approx(
        {"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})


def test_binary_other_positive_label_and_prefix() -> None:
    got = classification_metrics(np.array(BINARY_TRUE), np.array(BINARY_PRED), pos_label=0, prefix="val/")
    # for label 0: tp=2, fp=1 (idx 3), fn=1 (idx 2)
    assert got == approx({"val/accuracy": 4 / 6, "val/precision": 2 / 3, "val/recall": 2 / 3, "val/f1": 2 / 3})


def test_macro_and_weighted() -> None:
    macro = classification_metrics(MULTI_TRUE, MULTI_PRED, average="macro")
    mean = (2 / 3 + 1 / 2 + 1 / 2) / 3
    assert macro == approx({"accuracy": 4 / 7, "precision": mean, "recall": mean, "f1": mean})
    weighted = classification_metrics(MULTI_TRUE, MULTI_PRED, average="weighted")
    mean = (3 * 2 / 3 + 2 * 1 / 2 + 2 * 1 / 2) / 7
    assert weighted == approx({"accuracy": 4 / 7, "precision": mean, "recall": mean, "f1": mean})


def test_zero_division_is_zero() -> None:
    # class 1 never predicted: precision 0/0 -> 0; recall 0/2 -> 0; f1 0
    got = classification_metrics([1, 1, 0, 0], [0, 0, 0, 0])
    assert got == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    macro = classification_metrics([0, 0, 1], [0, 2, 1], average="macro")  # class 2 has no support
    assert macro["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert classification_metrics([], [], average="macro") == {"accuracy": 0.0, "precision": 0.0,
                                                               "recall": 0.0, "f1": 0.0}


def test_string_labels() -> None:
    got = classification_metrics(["cat", "dog", "dog"], ["cat", "cat", "dog"], average="macro")
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["precision"] == pytest.approx((1 / 2 + 1) / 2)


def test_misuse_raises() -> None:
    with pytest.raises(ValueError, match="average"):
        classification_metrics([0], [0], average="micro")
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="macro"):
        classification_metrics(MULTI_TRUE, MULTI_PRED)  # three classes, binary
