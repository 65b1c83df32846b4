"""The `trainmon` command. Each sub-command imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from trainmon import settings as settings_module
from trainmon.errors import TrainmonError

EPILOG = """settings come from defaults, then the config file (--config, $TRAINMON_CONFIG or
./trainmon.toml), then environment variables TRAINMON_<SECTION>_<KEY>; see docs/configuration.md."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _services(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.deploy import services

    names = args.names or None
    if args.kafka_brokers is not None:
        settings = settings.replace(services_kafka_brokers=args.kafka_brokers)
    if args.secure is not None:
        settings = settings.replace(services_secure=args.secure)
    if args.action == "start":
        services.start_all(settings, names, progress=_progress)
    elif args.action == "stop":
        services.stop_all(settings, names, progress=_progress)
    rows = services.status_all(settings, names)
    print(f"{'SERVICE':<12} {'STATE':<10} {'PID':>8}  {'ADDRESS':<26} DETAIL")
    for row in rows:
        print(f"{row.name:<12} {row.state:<10} {row.pid or '-':>8}  {row.address:<26} {row.detail}")
    if args.action == "status":
        return 0 if all(r.healthy for r in rows) else 3
    return 0


def _topics(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.deploy.topics import create_topics

    create_topics(settings, progress=print)
    return 0


def _db(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.clickhouse import migrations
    from trainmon.deploy import migrate

    settings = migrations(settings)  # the migrations user: [clickhouse] migrations_user or the local stack's
    if args.action == "migrate":
        migrate.migrate(settings, progress=print)
    else:
        for version, name in migrate.applied_versions(settings).items():
            print(f"{version:04d} {name}")
    return 0


def _agent(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.agent.daemon import configure_logging, serve

    configure_logging()
    return serve(settings, once=args.once, duration=args.duration)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _setting(field: str) -> Callable[[str], Any]:
    """argparse type of a setting's flag: the setting's own conversion and checks, so a flag is refused
    as the same value in the config file or the environment would be."""
    def parse(text: str) -> Any:
        try:
            value = settings_module.parse(field, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value is None:  # "" unsets in the file or environment; a flag not given is None already
            raise argparse.ArgumentTypeError("expected a value, got an empty one")
        return value
    return parse


def _setting_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """A flag for each setting of [section] declared with option() (trainmon/settings.py): --KEY, or
    --KEY/--no-KEY for a boolean. Its default is None, so main() can tell which flags were given: those
    win over the file and the environment."""
    group = parser.add_argument_group(
        f"[{section}] settings", f"each also KEY under [{section}] in the config file and TRAINMON_"
        f"{section.upper()}_KEY in the environment; a flag given wins over both (docs/configuration.md)")
    for field in settings_module.options(section):
        key = field.name.removeprefix(section + "_")
        meta = field.metadata
        default = meta["unset"] or json.dumps(field.default)  # a TOML value: 1.0, "sim", true
        text = f"{meta['help']} (default: {default}; [{section}] {key}, {settings_module.env_name(field.name)})"
        text = text.replace("%", "%%")  # argparse formats help with %
        flag = "--" + key.replace("_", "-")
        if field.type == "bool":
            group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=key, type=_setting(field.name), default=None, metavar=meta["metavar"],
                               help=text)
    parser.set_defaults(settings_section=section)


def _with_flags(args: argparse.Namespace, settings: settings_module.Settings) -> settings_module.Settings:
    """`settings` with the command's setting flags that were given (see _setting_flags)."""
    section = getattr(args, "settings_section", None)
    if section is None:
        return settings
    given = {f.name: getattr(args, f.name.removeprefix(section + "_")) for f in settings_module.options(section)}
    return settings.replace(**{name: value for name, value in given.items() if value is not None})


def _process(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.stream_processors import worker

    if args.check:
        print(worker.check(settings))
        return 0
    worker.run(settings)
    return 0


def _dashboard(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    import os

    from trainmon import dashboard
    from trainmon.dashboard import auth

    app = Path(dashboard.__file__).resolve().parent / "app.py"
    address, port = settings.dashboard_address, settings.dashboard_port  # flags already applied by main()
    auth_file = auth.auth_file(settings)  # a bad [dashboard] auth stops here, naming the file and key
    command = [sys.executable, "-m", "streamlit", "run", str(app),
               "--server.address", address, "--server.port", str(port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--server.runOnSave", "false", "--client.toolbarMode", "viewer"]
    if auth_file is not None:  # its only secrets: no stray .streamlit/secrets.toml of the working directory
        command += ["--secrets.files", str(auth_file)]
    if args.config:  # the pages load settings themselves: hand them the same file
        os.environ[settings_module.CONFIG_ENV] = str(Path(args.config).resolve())
    login = f"OIDC login, [auth] from {auth_file}" if auth_file else "no login"
    _progress(f"dashboard: http://{address}:{port}/ (ClickHouse {settings.clickhouse}, "
              f"user {settings.dashboard_reader.clickhouse_user}; {login})")
    sys.stdout.flush()
    os.execv(sys.executable, command)  # Streamlit takes this process over: signals reach it directly


def _simulate(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.agent.simulator import FaultSpec, SimConfig, describe_faults, describe_hazards

    if args.list_faults:
        print(describe_faults())
        return 0
    if args.list_hazards:
        print(describe_hazards())
        return 0
    from trainmon.agent.daemon import configure_logging
    from trainmon.agent.simulator.runner import serve

    configure_logging()
    config = SimConfig.from_settings(settings, faults=tuple(FaultSpec.parse(f) for f in args.fault),
                                     hazards=tuple(args.hazard))
    spool_dir = settings.simulate_spool_dir
    serve(settings, config, spool_dir=Path(spool_dir).expanduser() if spool_dir else None,
          rate_report=args.rate_report, progress=_progress)
    return 0


def _demo(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.deploy import demo

    faults = tuple(args.fault) if args.fault else demo.DEFAULT_FAULTS
    return demo.run(settings, nodes=args.nodes, gpus=args.gpus, faults=faults, epochs=args.epochs,
                    progress=_progress)


def _config(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from urllib.parse import urlsplit

    from trainmon.clickhouse import login_user

    def shown(name: str, value: object) -> object:
        """Secrets as ***, and a password in a URL; a password *file* is a path and stays readable."""
        if isinstance(value, str) and value and not name.endswith("_file"):
            if any(word in name for word in ("password", "secret", "token")):
                return "***"
            password = urlsplit(value).password if "://" in value else None
            if password is not None:
                return value.replace(f":{password}@", ":***@", 1)
        return value

    for field in dataclasses.fields(settings):
        section, key = field.name.split("_", 1)
        print(f"[{section}] {key} = {shown(field.name, getattr(settings, field.name))!r}   "
              f"({settings_module.env_name(field.name)})")
    print(f"# effective: bootstrap_servers={settings.bootstrap_servers} clickhouse={shown('url', settings.clickhouse)} "
          f"clickhouse_user={login_user(settings)} home={settings.home}")
    return 0


# --- history: `trainmon runs`, `trainmon alerts` (read-only, as the dashboard's user; trainmon/history.py)


def _when(text: str) -> Any:
    """argparse type of --since: a duration ago or a date/time (trainmon.history.since)."""
    from trainmon.history import since

    try:
        return since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _jsonable(value: Any) -> Any:
    """Cells and records as JSON has them: times as ISO 8601, NaN and NaT as null, numpy scalars as numbers."""
    import math

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return None if str(value) == "NaT" else value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _emit(args: argparse.Namespace, frame: Any, shown: Sequence[str], data: Any = None) -> None:
    """A table to stdout: --json (records, or `data` when given), --csv, else the `shown` columns as text."""
    if args.format == "json":
        records = frame.to_dict("records") if data is None else data
        json.dump(_jsonable(records), sys.stdout, indent=2, ensure_ascii=False)
        print()
    elif args.format == "csv":
        cells = frame.map(lambda v: json.dumps(_jsonable(v)) if isinstance(v, (dict, list)) else v)
        cells.to_csv(sys.stdout, index=False)
    elif frame.empty:
        print("(none)")
    else:
        text = frame[[c for c in shown if c in frame.columns]].copy()
        for column in text.columns:
            if str(text[column].dtype).startswith("datetime64"):
                text[column] = text[column].dt.strftime("%Y-%m-%d %H:%M:%S").fillna("-")
        print(text.to_string(index=False, na_rep="-", max_colwidth=60))


def _history(settings: settings_module.Settings) -> Any:
    """The read API on the dashboard's read-only user; a ClickHouse that does not answer is one line."""
    from clickhouse_connect.driver.exceptions import Error

    from trainmon.history import History

    try:
        return History(settings)
    except Error as exc:
        reader = settings.dashboard_reader
        raise TrainmonError(f"ClickHouse at {reader.clickhouse} did not answer as {reader.clickhouse_user}: "
                            f"{str(exc).splitlines()[0][:300]}") from None


def _runs(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    with _history(settings) as history:
        if args.runs_action == "ls":
            try:
                frame = history.runs(project=args.project, status=args.status, tag=args.tag, user=args.user,
                                     search=args.search, metric=args.metric, metric_mode=args.metric_mode,
                                     order_by=args.order_by, descending=not args.ascending, limit=args.limit)
            except ValueError as exc:  # an --order-by that is no column
                raise TrainmonError(str(exc)) from None
            shown = ["project", "run", "status", "user", "started_at", "duration_s", "last_step", "alerts_firing"]
            _emit(args, frame, shown + (["best"] if args.metric else []))
        elif args.runs_action == "show":
            import pandas as pd

            from trainmon.dashboard.queries import flatten

            record = history.run(args.run, project=args.project)
            metrics = history.summary(args.run, project=record["project"])
            if args.format == "json":
                _emit(args, metrics, [], {"run": record, "metrics": metrics.to_dict("records")})
                return 0
            flat = flatten({k: v for k, v in record.items() if k != "ranks"})
            for row in metrics.to_dict("records"):
                flat.update({f"metrics.{row['name']}.{k}": v for k, v in row.items() if k != "name"})
            table = pd.DataFrame({"key": list(flat), "value": [_jsonable(v) for v in flat.values()]})
            if args.format == "csv":
                _emit(args, table, [])
                return 0
            documents = ("config", "datasets", "model", "code", "environment", "metrics.")
            _emit(args, table[~table["key"].str.startswith(documents)], ["key", "value"])
            config = table[table["key"].str.startswith("config.")]
            print("\nconfig:" + ("" if len(config) else " (none)"))
            if len(config):
                print(config.to_string(index=False, header=False))
            print("\nmetrics:")
            _emit(args, metrics, ["name", "last", "min", "max", "step", "count", "non_finite"])
        else:  # export
            exported = history.export(args.run, args.file, project=args.project, names=args.metric or None)
            _progress(f"wrote {exported.points:,} points of {exported.metrics} metric(s) of {args.run} "
                      f"to {exported.path}")
    return 0


def _alerts(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    with _history(settings) as history:
        if args.alerts_action == "ls":
            frame = history.alerts(since=args.since, run=args.run, project=args.project, rule=args.rule,
                                   severity=args.severity, host=args.host, firing_only=args.firing, limit=args.limit)
            _emit(args, frame, ["starts_at", "state", "severity", "rule", "project", "run", "host", "summary"])
        else:  # incidents
            frame = history.incidents(since=args.since, run=args.run, project=args.project, host=args.host,
                                      firing_only=args.firing, limit=args.limit)
            _emit(args, frame, ["starts_at", "state", "severity", "rule", "members_total", "summary"])
    return 0


def _import(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    import time

    from trainmon.agent.importers import load

    if args.source == "tensorboard":
        from trainmon.agent.importers import tensorboard

        runs = tensorboard.read(args.path, project=args.project, run=args.run, host=args.host, user=args.user,
                                status=args.status)
    else:
        from trainmon.agent.importers import mlflow

        runs = mlflow.read(args.path, project=args.project, experiments=args.experiment, run_ids=args.run_id)
        if not runs:
            raise TrainmonError(f"{args.path}: no runs (of the experiments and run ids asked for)")
    from clickhouse_connect.driver.exceptions import Error

    failed = 0
    for run in runs:
        try:
            done = load.load(settings, run, dry_run=args.dry_run)
        except Error as exc:  # the first query fails fast; a write that fails later is retried, like the sink's
            raise TrainmonError(f"ClickHouse at {settings.clickhouse} did not answer: "
                                f"{str(exc).splitlines()[0][:300]}") from None
        where = f"{done.run} (project {done.project})"
        if done.state == "exists":
            print(f"skipped {where}: already in trainmon")
            continue
        steps = f"steps {done.first_step:,}..{done.last_step:,}" if done.first_step is not None else "no steps"
        print(f"{'checked' if args.dry_run else 'imported'} {where}: {done.points:,} points of {done.metrics} "
              f"metric(s), {steps}" + (f", {done.replaced:,} replaced by a newer value at the same step"
                                      if done.replaced else ""))
        if done.started and done.started < time.time() - load.RAW_POINTS_DAYS * 86400:
            print(f"  points older than {load.RAW_POINTS_DAYS} days: ClickHouse drops them from the raw table (its "
                  "TTL); the rollups keep them (1-minute buckets 5 years, hourly for good)", file=sys.stderr)
        if done.invalid:
            failed += 1
            print(f"  {done.invalid:,} event(s) refused by the event contract, e.g. {'; '.join(done.problems)}",
                  file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainmon", description="Watch model training on GPU clusters.", epilog=EPILOG)
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $TRAINMON_CONFIG or ./trainmon.toml)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    services = commands.add_parser(
        "services",
        help="start, stop or show the local Kafka, ClickHouse and Alertmanager (native, no Docker)",
        description="Local services bound to 127.0.0.1, data under the services home; "
        "start is idempotent, stop goes by recorded PID. status exits 3 when any is not healthy.",
    )
    services.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    services.add_argument("names", nargs="*", metavar="NAME", help="kafka, clickhouse and/or alertmanager (default: all)")
    services.add_argument("--kafka-brokers", type=int, metavar="N",
                          help="Kafka nodes: 1, or 3 for a KRaft cluster that survives losing one, on ports "
                          "+100 per node (default: [services] kafka_brokers); clients need the same setting")
    services.add_argument("--secure", action=argparse.BooleanOptionalAction,
                          help="the secure local stack: Kafka on SASL_SSL + SCRAM-SHA-512, ClickHouse on HTTPS with "
                          "passwords, local certificates (default: [services] secure); clients need the same "
                          "setting, so prefer putting it in trainmon.toml")
    services.set_defaults(handler=_services)

    topics = commands.add_parser("topics", help="create the contract's Kafka topics",
                                 description="Creates missing topics with [kafka] partitions and "
                                 "replication_factor; existing ones are reported, never changed.")
    topics.add_argument("action", choices=["create"], help="create missing topics")
    topics.set_defaults(handler=_topics)

    db = commands.add_parser("db", help="ClickHouse schema migrations",
                             description="migrate applies missing migrations in order; status lists applied ones.")
    db.add_argument("action", choices=["migrate", "status"], help="what to do")
    db.set_defaults(handler=_db)

    agent = commands.add_parser(
        "agent",
        help="run the node daemon: one system sample per node per interval to Kafka",
        description="Samples this node (CPU, memory, disk, network, the registered training processes and "
        "every GPU through NVML) and publishes one system event per interval; events go through a disk "
        "spool, so nothing is lost while Kafka is away. Stops on SIGTERM/SIGINT at the next tick. "
        "See docs/agent.md.",
        epilog="Kafka settings come from the global option (trainmon --config FILE agent ...) or "
        "TRAINMON_KAFKA_* variables; see docs/configuration.md.",
    )
    _setting_flags(agent, "agent")
    agent.add_argument("--once", action="store_true",
                       help="take one sample after one interval, print it as JSON to stdout, publish nothing")
    agent.add_argument("--duration", type=_seconds, metavar="SECONDS",
                       help="exit after this many seconds (default: run until SIGTERM/SIGINT)")
    agent.set_defaults(handler=_agent)

    process = commands.add_parser(
        "process",
        help="run one stream-processor worker (Faust): windows, alert rules and routes, ClickHouse sink",
        description="One worker of the processors' consumer group, until SIGTERM or Ctrl-C. Run more "
        "(here or on other machines, same --group) to split the topics' partitions between them.",
    )
    _setting_flags(process, "processors")
    process.add_argument("--check", action="store_true",
                         help="validate the pipeline file (every rule, route and incident edge built as at "
                         "start, ${VARIABLES} filled from the settings) and print what a worker would run, "
                         "then exit: 0 when valid, 2 with the file, line and key of the first mistake. "
                         "Contacts neither Kafka nor ClickHouse")
    process.set_defaults(handler=_process)

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the Streamlit dashboard (127.0.0.1:8501 by default)",
        description="Runs `streamlit run dashboard/app.py` headless on [dashboard] address and port, "
        "querying ClickHouse as the read-only [dashboard] clickhouse_user. See docs/dashboard.md.",
    )
    _setting_flags(dashboard, "dashboard")
    dashboard.set_defaults(handler=_dashboard)

    simulate = commands.add_parser(
        "simulate",
        help="publish a synthetic GPU cluster running training jobs, with optional injected faults and hazards",
        description="N nodes x G GPUs running M runs with realistic training curves and hardware figures, "
        "published in real time through the agent's publisher (and its spool) like real nodes; named "
        "faults trip the shipped alert rules. Doubles as the benchmarks' load generator (--max-rate). "
        "Stops at --duration, when every run has done --steps, or on SIGINT/SIGTERM (runs then end "
        "'killed'). See docs/simulate.md.",
    )
    _setting_flags(simulate, "simulate")
    simulate.add_argument("--fault", action="append", default=[], metavar="NAME[@TARGET][:AT]",
                          help="inject a fault AT seconds after the start (default 10); TARGET is run-N or node-N (or "
                          "a full id), with /RANK or /GPU where the fault takes one (default: spread over runs and "
                          "busy nodes); repeatable; see --list-faults")
    simulate.add_argument("--list-faults", action="store_true", help="list the faults and the rules they trip, and exit")
    simulate.add_argument("--hazard", action="append", default=[], metavar="NAME",
                          help="live through a hazard that must not page (checkpoint and eval pauses, warm-up spikes, "
                          "noisy loss, resumes, late delivery, a skewed clock); repeatable, or 'all'; see --list-hazards")
    simulate.add_argument("--list-hazards", action="store_true",
                          help="list the hazards and the rules they put to the test, and exit")
    simulate.add_argument("--rate-report", action="store_true",
                          help="print progress every 5 s: events/s, metric values/s, CPU, publisher delivery")
    simulate.set_defaults(handler=_simulate)

    demo = commands.add_parser(
        "demo",
        help="the whole local stack with live data (what `make demo` runs), until Ctrl-C",
        description="Starts the services (if needed), topics, migrations, a processors worker, the dashboard, "
        "this machine's node daemon, a simulated cluster with faults and a real two-rank Keras training job "
        "that trainmon's alerts can stop (examples/train_digits_keras.py). Ctrl-C stops everything it started.",
    )
    demo.add_argument("--nodes", type=int, default=8, help="simulated nodes (default %(default)s)")
    demo.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (default %(default)s)")
    demo.add_argument("--epochs", type=int, default=300, help="epochs of the real training job (default %(default)s)")
    demo.add_argument("--fault", action="append", metavar="NAME",
                      help="a simulated fault (repeatable; default: nan, hot_gpu, straggler, stall, dead_node; "
                      "see `trainmon simulate --list-faults`)")
    demo.set_defaults(handler=_demo)

    runs = commands.add_parser(
        "runs", help="list runs, show one, export one's points to Parquet (read-only)",
        description="Reads ClickHouse as the dashboard's read-only user ([dashboard] clickhouse_user), through the "
        "dashboard's own queries: what it prints is what the dashboard shows. The same from Python: "
        "trainmon.history (docs/history.md).")
    runs_actions = runs.add_subparsers(dest="runs_action", required=True, metavar="ACTION")
    runs_ls = runs_actions.add_parser("ls", help="runs matching the filters, newest first",
                                      description="Runs matching every filter given (a repeated filter matches any "
                                      "of its values; --tag: runs having every tag given).")
    runs_ls.add_argument("--project", action="append", metavar="NAME", help="only this project (repeatable)")
    runs_ls.add_argument("--status", action="append", metavar="STATUS",
                         help="running, finished, failed, killed, crashed or lost (repeatable)")
    runs_ls.add_argument("--tag", action="append", metavar="TAG", help="only runs having this tag (repeatable: all of them)")
    runs_ls.add_argument("--user", action="append", metavar="USER", help="only runs of this user (repeatable)")
    runs_ls.add_argument("--search", metavar="TEXT", help="runs whose id or name contains TEXT (any case)")
    runs_ls.add_argument("--metric", metavar="NAME", help="add column `best`: the run's best value of this metric")
    runs_ls.add_argument("--metric-mode", choices=["min", "max", "last"], default="min",
                         help="what `best` is: the lowest, highest or last value (default %(default)s)")
    runs_ls.add_argument("--order-by", default="started_at", metavar="COLUMN",
                         help="sort by this column, e.g. started_at, duration_s, status, best (default %(default)s)")
    runs_ls.add_argument("--ascending", action="store_true", help="sort ascending (default: descending)")
    runs_ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (default %(default)s)")
    runs_show = runs_actions.add_parser("show", help="one run: record, config and each metric's last, min and max",
                                        description="The run's record (status, times, hosts, tags, config, datasets, "
                                        "model, code, environment) and, per metric, its last value, min, max and "
                                        "last step over all ranks.")
    runs_show.add_argument("run", metavar="RUN", help="run id")
    runs_show.add_argument("--project", metavar="NAME", help="its project (default: looked up from the run id)")
    runs_export = runs_actions.add_parser("export", help="every raw point of a run to a Parquet file",
                                          description="Writes every point (not downsampled) of the run's metrics: "
                                          "project, run, name, rank, host, step, epoch, value, time; the run's record "
                                          "goes into the file's metadata (key trainmon.run, JSON).")
    runs_export.add_argument("run", metavar="RUN", help="run id")
    runs_export.add_argument("file", metavar="FILE", help="the Parquet file to write (replaced if it exists)")
    runs_export.add_argument("--project", metavar="NAME", help="its project (default: looked up from the run id)")
    runs_export.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable)")
    alerts = commands.add_parser("alerts", help="list alerts or incidents (read-only)",
                                 description="Alert episodes or incidents as the dashboard's alerts page lists them, "
                                 "newest first, read as the dashboard's read-only user.")
    alerts_actions = alerts.add_subparsers(dest="alerts_action", required=True, metavar="ACTION")
    alerts_ls = alerts_actions.add_parser("ls", help="alert episodes with their latest state",
                                          description="One row per episode (fingerprint, start) with its latest state.")
    alerts_incidents = alerts_actions.add_parser("incidents", help="incidents: alerts correlated into one page",
                                                 description="Incidents with their members' hosts and runs.")
    for action in (alerts_ls, alerts_incidents):
        action.add_argument("--since", type=_when, metavar="WHEN",
                            help="active since: a duration ago (30m, 1h, 2d) or a date/time (2026-12-01T10:00, UTC); "
                            "those still firing are always listed (default: all)")
        action.add_argument("--run", metavar="RUN", help="only this run's")
        action.add_argument("--project", metavar="NAME", help="only this project's")
        action.add_argument("--host", metavar="HOST", help="only this host's")
        action.add_argument("--firing", action="store_true", help="only those firing now")
        action.add_argument("--limit", type=int, default=200, metavar="N", help="at most N rows (default %(default)s)")
    alerts_ls.add_argument("--rule", action="append", metavar="RULE", help="only this rule's (repeatable)")
    alerts_ls.add_argument("--severity", action="append", choices=["info", "warning", "critical"],
                           help="only this severity (repeatable)")
    for action in (runs_ls, runs_show, alerts_ls, alerts_incidents):
        shape = action.add_mutually_exclusive_group()
        shape.add_argument("--json", dest="format", action="store_const", const="json",
                           help="print JSON (all columns; times in ISO 8601 UTC) instead of a table")
        shape.add_argument("--csv", dest="format", action="store_const", const="csv",
                           help="print CSV (all columns) instead of a table")
    runs.set_defaults(handler=_runs)
    alerts.set_defaults(handler=_alerts)

    imports = commands.add_parser(
        "import", help="import TensorBoard logs or MLflow runs, with their steps, wall times and parameters",
        description="Reads another tool's history and writes it as trainmon runs (ClickHouse, as [clickhouse] "
        "user; alert rules do not run on it). A run already in trainmon is skipped, so importing again is safe. "
        "Needs the `import` extra (tensorboardX) for TensorBoard. See docs/history.md.")
    sources = imports.add_subparsers(dest="source", required=True, metavar="SOURCE")
    board = sources.add_parser("tensorboard", help="TensorBoard event files: each directory holding some is a run",
                               description="Scalars (with steps and wall times) and hparams of every directory under "
                               "DIR holding event files; no TensorFlow needed.")
    board.add_argument("path", metavar="DIR", help="a log directory (TensorBoard's --logdir)")
    board.add_argument("--project", metavar="NAME", help="project of the runs (default: DIR's name)")
    board.add_argument("--run", metavar="ID", help="run id, when DIR holds one run (default: tb-<name>-<start>-<hash>)")
    board.add_argument("--host", metavar="HOST", help="host of the runs (default: from the event file names)")
    board.add_argument("--user", metavar="USER", help="user of the runs (default: none)")
    board.add_argument("--status", choices=["finished", "failed", "killed", "crashed"], default="finished",
                       help="how the runs ended: event files do not say (default %(default)s)")
    flow = sources.add_parser("mlflow", help="MLflow runs from a local store: mlruns/ directory or sqlite:/// database",
                              description="Params, tags, metrics (with steps and timestamps) and status of the "
                              "store's runs; MLflow itself is not needed.")
    flow.add_argument("path", metavar="URI", help="./mlruns, file:///path/mlruns or sqlite:///mlflow.db")
    flow.add_argument("--project", metavar="NAME", help="project of the runs (default: each run's experiment name)")
    flow.add_argument("--experiment", action="append", default=[], metavar="NAME_OR_ID",
                      help="only this experiment's runs (repeatable; default: all)")
    flow.add_argument("--run-id", action="append", default=[], metavar="ID", help="only this MLflow run (repeatable)")
    for source in (board, flow):
        source.add_argument("--dry-run", action="store_true",
                            help="read and check everything, count what would be imported, write nothing")
    imports.set_defaults(handler=_import)

    config = commands.add_parser("config", help="print the effective settings and their environment variables")
    config.set_defaults(handler=_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _with_flags(args, settings_module.load(args.config))
        handler: Callable[[argparse.Namespace, settings_module.Settings], int] = args.handler
        return handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except TrainmonError as exc:
        print(f"trainmon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
