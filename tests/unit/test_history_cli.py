"""trainmon.history and the `runs`, `alerts` and `import` commands without ClickHouse: argument parsing,
help, output shapes, lookups of a run's project, and dry-run imports."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit.test_history_import import file_store, write_log
from trainmon import cli
from trainmon.history import History, RunNotFound, since

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected", [
    ("1h", NOW - timedelta(hours=1)),
    ("90s", NOW - timedelta(seconds=90)),
    ("2d", NOW - timedelta(days=2)),
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=timezone.utc)),  # naive: UTC
    ("2026-12-01T10:00+02:00", datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)),
])
def test_since_takes_a_duration_ago_or_a_date(text: str, expected: datetime) -> None:
    assert since(text, now=NOW) == expected


def test_since_names_what_it_understands() -> None:
    with pytest.raises(ValueError, match="duration ago"):
        since("last tuesday")


def test_the_read_api_does_not_import_streamlit() -> None:
    probe = ("import sys, trainmon.history, trainmon.dashboard.queries; "
             "assert 'streamlit' not in sys.modules, 'streamlit imported'")
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, timeout=60)


class Rows:
    """A clickhouse-connect client answering every query with the same rows."""

    def __init__(self, rows: list[list]) -> None:
        self.rows = rows

    def query(self, sql: str, parameters: dict | None = None):
        return type("Result", (), {"result_rows": self.rows})


@pytest.mark.parametrize("rows, project, expected", [
    ([["vision"]], None, "vision"),
    ([["vision"]], "vision", "vision"),
    ([], None, RunNotFound("no run 'r1'")),
    ([["a"], ["b"]], None, RunNotFound("several projects")),
    ([["a"], ["b"]], "b", "b"),
    ([["vision"]], "nlp", RunNotFound("it is in vision")),
])
def test_a_runs_project_is_looked_up_from_its_id(rows, project, expected) -> None:
    history = History(client=Rows(rows))
    if isinstance(expected, Exception):
        with pytest.raises(RunNotFound, match=str(expected)):
            history.project_of("r1", project)
    else:
        assert history.project_of("r1", project) == expected


def commands(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


@pytest.mark.parametrize("path", [("runs", "ls"), ("runs", "show"), ("runs", "export"), ("alerts", "ls"),
                                  ("alerts", "incidents"), ("import", "tensorboard"), ("import", "mlflow")])
def test_every_option_of_the_history_commands_has_help(path: tuple[str, ...]) -> None:
    parser = commands(cli.build_parser(), *path)
    assert parser.description
    for action in parser._actions:
        assert action.help, f"{' '.join(path)} {action.option_strings or action.dest}: no help"


def test_json_and_csv_are_exclusive_and_since_is_parsed() -> None:
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["runs", "ls", "--json", "--csv"])
    args = parser.parse_args(["alerts", "ls", "--since", "1h", "--run", "r1", "--json"])
    assert args.format == "json" and args.run == "r1"
    assert timedelta(minutes=59) < datetime.now(timezone.utc) - args.since < timedelta(minutes=61)
    assert parser.parse_args(["runs", "ls"]).format is None  # a table


def test_cells_become_json() -> None:
    cells = {"t": pd.Timestamp("2026-12-04 12:00", tz="UTC"), "nan": math.nan, "inf": math.inf, "n": np.int64(3),
             "nat": pd.NaT, "nested": {"x": [np.float64(0.5)]}}
    assert json.loads(json.dumps(cli._jsonable(cells))) == {
        "t": "2026-12-04T12:00:00+00:00", "nan": None, "inf": "inf", "n": 3, "nat": None, "nested": {"x": [0.5]}}


def test_import_dry_run_reads_and_counts_without_clickhouse(tmp_path: Path, capsys) -> None:
    write_log(tmp_path / "logs" / "a")
    assert cli.main(["import", "tensorboard", str(tmp_path / "logs"), "--project", "p", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("checked tb-a-") and "16 points of 3 metric(s), steps 0..5" in out.out
    assert "older than 730 days" in out.err  # 2023's points: the raw table's TTL would drop them


def test_import_mlflow_dry_run_lists_each_run(tmp_path: Path, capsys) -> None:
    root = file_store(tmp_path / "mlruns")
    assert cli.main(["import", "mlflow", str(root), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("checked mlflow-") for line in lines)
    assert cli.main(["import", "mlflow", str(root), "--experiment", "nope", "--dry-run"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["import", "tensorboard", "/does/not/exist"], "is not a directory"),
    (["import", "mlflow", "http://mlflow:5000"], "only local stores"),
])
def test_import_errors_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainmon: error: ") and message in err and err.count("\n") == 1
