"""MLflow runs -> ImportedRun, read from the store's files or database, without MLflow itself.

Two local stores (the layouts of MLflow 2.x and 3.x; MLflow 3 defaults to the database one):
- the file store, `mlruns/` (a path or file:// URI): `<experiment>/meta.yaml`, then per run
  `<run>/meta.yaml`, `params/<key>` (the value as text), `tags/<key>`, `metrics/<key>` with one line
  per value, "<timestamp ms> <value> <step>" (keys with "/" are subdirectories);
- the SQL store as SQLite, `sqlite:///path/mlflow.db`: tables experiments, runs, params, tags and
  metrics (NaN kept as is_nan = 1; MLflow stores ±Inf as ±1.8e308, and so they come back).

A run maps to: project = its experiment's name, run id `mlflow-<run id>`, name = run name, user,
config = params (numbers and booleans typed), tags = its own tags as "key=value" (MLflow's
`mlflow.*` tags go to `code`: source, commit, branch), points with their steps and timestamps, and
run_end with its status. RUNNING or SCHEDULED runs get no run_end. Deleted runs and experiments are skipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from trainmon.agent.importers.run import ImportedRun, number
from trainmon.contract import MAX_TEXT_LEN
from trainmon.errors import TrainmonError

STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}  # RUNNING, SCHEDULED: no end yet
FILE_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}  # the file store's numbers
CODE_TAGS = {"mlflow.source.name": "command", "mlflow.source.git.commit": "commit",
             "mlflow.source.git.branch": "branch", "mlflow.source.git.repoURL": "repository"}


class MlflowStoreError(TrainmonError):
    """Not an MLflow store this importer reads, or one it cannot open."""


def read(uri: str, *, project: str | None = None, experiments: Iterable[str] = (),
         run_ids: Iterable[str] = ()) -> list[ImportedRun]:
    """The runs of an MLflow store. experiments: names or ids to keep (default all); run_ids:
    MLflow run ids to keep (default all); project: instead of each run's experiment name."""
    kept = _Filter(set(experiments), set(run_ids))
    if uri.startswith("sqlite:"):
        return _read_sqlite(uri, project, kept)
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file"):
        raise MlflowStoreError(f"{uri}: only local stores are read (a path, file:// or sqlite:///); a tracking "
                               "server's runs can be exported to one with MLflow's own tools")
    root = Path(unquote(parts.path) if parts.scheme else uri).expanduser()
    if not root.is_dir():
        raise MlflowStoreError(f"{root}: no such directory (expected an MLflow file store, e.g. ./mlruns)")
    return _read_files(root, project, kept)


class _Filter:
    def __init__(self, experiments: set[str], run_ids: set[str]) -> None:
        self.experiments, self.run_ids = experiments, run_ids

    def experiment(self, experiment_id: str, name: str) -> bool:
        return not self.experiments or experiment_id in self.experiments or name in self.experiments

    def run(self, run_id: str) -> bool:
        return not self.run_ids or run_id in self.run_ids


def _run(project: str, run_id: str, source: str, *, name: str | None, user: str | None, status: str,
         start_ms: int | None, end_ms: int | None, params: dict[str, str], tags: dict[str, str],
         points: list[tuple[str, int, float, float]]) -> ImportedRun:
    first = min((when for _, _, when, _ in points), default=None)
    started = start_ms / 1000 if start_ms else first
    if started is None:
        raise MlflowStoreError(f"{source}: run {run_id} has neither a start time nor metrics")
    code = {field: tags[key] for key, field in CODE_TAGS.items() if tags.get(key)}
    own = [f"{key}={value}" for key, value in sorted(tags.items()) if not key.startswith("mlflow.")]
    return ImportedRun(
        project=project, run=f"mlflow-{run_id}", source=source, started=started,
        name=name or tags.get("mlflow.runName") or None, user=user or tags.get("mlflow.user") or None,
        config={key: number(value) for key, value in params.items()},
        tags=[tag for tag in own if len(tag) <= MAX_TEXT_LEN], code={"mlflow_run_id": run_id, **code},
        points=points, status=STATUS.get(status), ended=end_ms / 1000 if end_ms else None)


# --- the file store ------------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MlflowStoreError(f"{path}: unreadable ({exc})") from None
    return document if isinstance(document, dict) else {}


def _texts(directory: Path) -> dict[str, str]:
    """params/ or tags/: key (its path under the directory) -> the file's text."""
    if not directory.is_dir():
        return {}
    return {path.relative_to(directory).as_posix(): path.read_text()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _metric_lines(directory: Path) -> list[tuple[str, int, float, float]]:
    points = []
    if not directory.is_dir():
        return points
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        key = path.relative_to(directory).as_posix()
        for number_, line in enumerate(path.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:  # MLflow before 1.0 wrote no step: it is 0 there
                timestamp, value, step = int(fields[0]), float(fields[1]), int(fields[2]) if len(fields) > 2 else 0
            except (ValueError, IndexError):
                raise MlflowStoreError(f"{path}:{number_}: expected '<timestamp ms> <value> <step>', "
                                       f"got {line[:80]!r}") from None
            points.append((key, step, timestamp / 1000, value))
    return points


def _read_files(root: Path, project: str | None, kept: _Filter) -> list[ImportedRun]:
    out = []
    experiments = [path.parent for path in sorted(root.glob("*/meta.yaml"))]
    if not experiments:
        raise MlflowStoreError(f"{root}: no experiments (<id>/meta.yaml): not an MLflow file store")
    for directory in experiments:
        experiment = _yaml(directory / "meta.yaml")
        name = str(experiment.get("name") or directory.name)
        if experiment.get("lifecycle_stage") == "deleted" or not kept.experiment(directory.name, name):
            continue
        for meta_path in sorted(directory.glob("*/meta.yaml")):
            meta, run_dir = _yaml(meta_path), meta_path.parent
            run_id = str(meta.get("run_id") or meta.get("run_uuid") or "")
            if not run_id or meta.get("lifecycle_stage") == "deleted" or not kept.run(run_id):
                continue  # a logged model's or a trace's folder has no run id
            out.append(_run(
                project or name, run_id, f"mlflow:{run_dir}", name=meta.get("run_name"), user=meta.get("user_id"),
                status=FILE_STATUS.get(meta.get("status"), ""), start_ms=meta.get("start_time"),
                end_ms=meta.get("end_time"), params=_texts(run_dir / "params"), tags=_texts(run_dir / "tags"),
                points=_metric_lines(run_dir / "metrics")))
    return out


# --- the SQL store as SQLite ----------------------------------------------------------------------


def _read_sqlite(uri: str, project: str | None, kept: _Filter) -> list[ImportedRun]:
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
    path = Path(unquote(uri.removeprefix("sqlite:///" if uri.startswith("sqlite:///") else "sqlite:")))
    if not path.is_file():
        raise MlflowStoreError(f"{uri}: no such file (sqlite:///relative.db or sqlite:////absolute/path.db)")
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)  # read-only: never touches the store
    try:
        rows = db.execute(
            "SELECT r.run_uuid, r.name, r.user_id, r.status, r.start_time, r.end_time, e.experiment_id, e.name "
            "FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
            "WHERE r.lifecycle_stage != 'deleted' AND e.lifecycle_stage != 'deleted' "
            "ORDER BY r.start_time, r.run_uuid").fetchall()
        out = []
        for run_id, name, user, status, start_ms, end_ms, experiment_id, experiment in rows:
            if not kept.experiment(str(experiment_id), experiment) or not kept.run(run_id):
                continue
            params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
            points = [(key, step, timestamp / 1000, float("nan") if is_nan else value)
                      for key, value, timestamp, step, is_nan in db.execute(
                          "SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ?", (run_id,))]
            out.append(_run(project or experiment, run_id, f"mlflow:{path}#{run_id}", name=name, user=user,
                            status=status, start_ms=start_ms, end_ms=end_ms, params=params, tags=tags,
                            points=points))
        return out
    except sqlite3.DatabaseError as exc:
        raise MlflowStoreError(f"{path}: not an MLflow SQLite store ({exc})") from None
    finally:
        db.close()
