"""Steps mapped to epochs for the dashboard's epoch axis: series buckets and alert rules alike."""

import math

import pandas as pd

from trainmon.dashboard.queries import epochs_at
from trainmon.dashboard.views.run import alert_marks

MAP = pd.DataFrame({"step": [100.0, 200.0, 400.0], "epoch": [1.0, 2.0, 3.0]})


def test_exact_at_logged_points_linear_between_nan_before():
    mapped = epochs_at(MAP, [100, 150, 300, 400, 500, 50])
    assert list(mapped[:5]) == [1.0, 1.5, 2.5, 3.0, 3.0] and math.isnan(mapped[5])
    assert math.isnan(epochs_at(MAP.iloc[0:0], [100])[0])  # a run that never logged an epoch


def test_alert_rules_land_on_the_epoch_of_their_step():
    alerts = pd.DataFrame([{"rule": "nan", "severity": "critical", "summary": "s", "values": {"step": 300.0}},
                           {"rule": "early", "severity": "warning", "summary": "s", "values": {"step": 10.0}}])
    marks = alert_marks(alerts, "epoch", MAP)
    assert list(zip(marks["rule"], marks["x"])) == [("nan", 2.5)]  # before any epoch: no rule drawn
    assert list(alert_marks(alerts, "step")["x"]) == [300.0, 10.0]
    assert alert_marks(alerts, "epoch", None) is None
