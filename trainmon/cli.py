"""The `trainmon` command. Each sub-command imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

from trainmon import settings as settings_module
from trainmon.errors import TrainmonError

EPILOG = """settings come from defaults, then the config file (--config, $TRAINMON_CONFIG or
./trainmon.toml), then environment variables TRAINMON_<SECTION>_<KEY>; see docs/configuration.md."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _services(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.deploy import services

    names = args.names or None
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
    from trainmon.deploy import migrate

    if args.action == "migrate":
        migrate.migrate(settings, progress=print)
    else:
        for version, name in migrate.applied_versions(settings).items():
            print(f"{version:04d} {name}")
    return 0


def _agent(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.agent.daemon import Options, configure_logging, serve

    configure_logging()
    return serve(settings, Options(interval=args.interval, host=args.host, gpu=not args.no_gpu,
                                   pcie=not args.no_pcie, disk_path=args.disk_path, spool_dir=args.spool_dir,
                                   once=args.once, duration=args.duration))


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _session_timeout(text: str) -> float:
    """argparse type: seconds, at least three of the workers' 1 s heartbeats (stream_processors/app.py)."""
    value = _seconds(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be at least 3 seconds (three 1 s heartbeats), got {text}")
    return value


def _process(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.stream_processors import worker

    if args.check:
        print(worker.check(settings, args.pipeline))
        return 0
    worker.run(settings, pipeline_path=args.pipeline, group_id=args.group, web_port=args.web_port,
               batch_events=args.batch_events, loglevel=args.loglevel, durable_state=args.durable_state,
               session_timeout_s=args.session_timeout)
    return 0


def _dashboard(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    import os

    from trainmon import dashboard

    app = Path(dashboard.__file__).resolve().parent / "app.py"
    address = args.address or settings.dashboard_address
    port = args.port if args.port is not None else settings.dashboard_port
    command = [sys.executable, "-m", "streamlit", "run", str(app),
               "--server.address", address, "--server.port", str(port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--server.runOnSave", "false", "--client.toolbarMode", "viewer"]
    if args.config:  # the pages load settings themselves: hand them the same file
        os.environ[settings_module.CONFIG_ENV] = str(Path(args.config).resolve())
    _progress(f"dashboard: http://{address}:{port}/ (ClickHouse {settings.clickhouse}, "
              f"user {settings.dashboard_reader.clickhouse_user})")
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
    config = SimConfig(nodes=args.nodes, gpus=args.gpus, runs=args.runs, world_size=args.world_size,
                       steps=args.steps, duration=args.duration, step_interval=args.step_interval,
                       interval=args.interval, heartbeat_s=args.heartbeat, val_every=args.val_every,
                       metrics_per_event=args.metrics_per_event, max_rate=args.max_rate, project=args.project,
                       prefix=args.prefix, seed=args.seed, faults=tuple(FaultSpec.parse(f) for f in args.fault),
                       hazards=tuple(args.hazard))
    serve(settings, config, spool_dir=Path(args.spool_dir).expanduser() if args.spool_dir else None,
          rate_report=args.rate_report, progress=_progress)
    return 0


def _demo(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from trainmon.deploy import demo

    faults = tuple(args.fault) if args.fault else demo.DEFAULT_FAULTS
    return demo.run(settings, nodes=args.nodes, gpus=args.gpus, faults=faults, epochs=args.epochs,
                    progress=_progress)


def _config(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        shown = "***" if "password" in field.name and value else value
        section, key = field.name.split("_", 1)
        print(f"[{section}] {key} = {shown!r}   ({settings_module.env_name(field.name)})")
    print(f"# effective: bootstrap_servers={settings.bootstrap_servers} clickhouse={settings.clickhouse} home={settings.home}")
    return 0


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
    agent.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                       help="sampling interval (default: 1)")
    agent.add_argument("--host", default="", metavar="NAME",
                       help="node name samples carry and are keyed by (default: $TRAINMON_HOST, else the hostname)")
    agent.add_argument("--no-gpu", action="store_true", help="do not load NVML; sample no GPUs")
    agent.add_argument("--no-pcie", action="store_true",
                       help="skip GPU PCIe throughput, which makes NVML wait 40 ms per GPU each interval")
    agent.add_argument("--disk-path", default="/", metavar="PATH",
                       help="report disk_used_percent of the filesystem holding PATH (default: /)")
    agent.add_argument("--spool-dir", default="", metavar="DIR",
                       help="write-ahead spool of events not yet delivered; one agent per directory "
                       "(default: ~/.cache/trainmon/spool/agent-<host>)")
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
    process.add_argument("--pipeline", type=Path, default=None, metavar="FILE",
                         help="rules, routes and windows (default: the shipped stream_processors/pipeline.yml; "
                         "see docs/alerting.md)")
    process.add_argument("--group", default="trainmon-processors", metavar="ID",
                         help="Kafka consumer group; workers with the same group share the work (default %(default)s)")
    process.add_argument("--web-port", type=int, default=None, metavar="PORT",
                         help="serve Faust's web view on 127.0.0.1:PORT (default: off)")
    process.add_argument("--batch-events", type=_positive_int, default=5000, metavar="N",
                         help="most events per topic handled and written to ClickHouse at once; a batch also "
                         "closes after 0.1 s. Bigger: more throughput under backlog, more memory "
                         "(default %(default)s)")
    process.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"],
                         help="log level (default %(default)s)")
    process.add_argument("--session-timeout", type=_session_timeout, default=6.0, metavar="SECONDS",
                         help="how long the consumer group waits for a worker that stopped heartbeating "
                         "(killed, its machine down or cut off) before its partitions go to the other "
                         "workers; a killed worker restarted at once waits as long for the group. It bounds "
                         "how soon alerts of a dead worker's partitions are evaluated again. Lower: faster "
                         "takeover, but a worker that cannot send its 1 s heartbeat for that long loses its "
                         "partitions. At least 3 s; brokers refuse less than their "
                         "group.min.session.timeout.ms (Kafka's default: 6 s) (default %(default)g)")
    process.add_argument("--no-durable-state", dest="durable_state", action="store_false",
                         help="for measuring what durability costs, not for production: write no state "
                         "snapshots and restore none. Rule state (NaN episodes, plateau history, last "
                         "heartbeats), firing alerts, open windows and the run book are LOST whenever this "
                         "worker restarts or a rebalance moves a partition, so alerts can fire again, never "
                         "resolve or be missed, and windows come out short; offsets are committed without "
                         "waiting for a snapshot (at-least-once)")
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
    dashboard.add_argument("--port", type=int, default=None, metavar="PORT",
                           help="port to listen on (default: [dashboard] port, 8501)")
    dashboard.add_argument("--address", default=None, metavar="ADDR",
                           help="address to listen on (default: [dashboard] address, 127.0.0.1; "
                           "there is no login, so expose it only behind an authenticating proxy)")
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
    simulate.add_argument("--nodes", type=int, default=4, metavar="N", help="nodes (default: %(default)s)")
    simulate.add_argument("--gpus", type=int, default=4, metavar="G", help="GPUs per node (default: %(default)s)")
    simulate.add_argument("--runs", type=int, default=2, metavar="M", help="concurrent runs (default: %(default)s)")
    simulate.add_argument("--world-size", type=int, default=None, metavar="RANKS",
                          help="ranks (GPUs) per run (default: the cluster's GPUs split evenly between the runs)")
    simulate.add_argument("--steps", type=int, default=None, metavar="N",
                          help="training steps per run; a run that reaches them ends 'finished' (default: no limit)")
    simulate.add_argument("--duration", type=_seconds, default=None, metavar="SECONDS",
                          help="stop after this long (default: until the runs finish, or SIGINT/SIGTERM)")
    simulate.add_argument("--step-interval", type=_seconds, default=0.05, metavar="SECONDS",
                          help="wall-clock seconds per training step, also the logged step_time_s (default: %(default)s)")
    simulate.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                          help="system sample interval per node (default: %(default)s)")
    simulate.add_argument("--heartbeat", type=_seconds, default=1.0, metavar="SECONDS",
                          help="heartbeat interval per rank (default: %(default)s)")
    simulate.add_argument("--val-every", type=int, default=100, metavar="STEPS",
                          help="steps between validation points, logged by rank 0 (default: %(default)s)")
    simulate.add_argument("--project", default="simulated", metavar="NAME", help="project of the runs (default: %(default)s)")
    simulate.add_argument("--prefix", default="sim", metavar="NAME",
                          help="names hosts <prefix>-node-NN and runs <prefix>-<UTC start>-run-N, and the spool "
                          "directory (default: %(default)s)")
    simulate.add_argument("--seed", type=int, default=0, metavar="N",
                          help="random seed: the same seed gives the same curves, figures and placement (default: %(default)s)")
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
    simulate.add_argument("--max-rate", type=float, default=None, metavar="VALUES_PER_S",
                          help="benchmark mode: step as fast as allowed, at most this many metric values per second "
                          "(0: no limit), instead of one step per --step-interval")
    simulate.add_argument("--metrics-per-event", type=int, default=0, metavar="N",
                          help="add N per-layer gradient norms to every metrics event: wide events for load tests "
                          "(default: %(default)s)")
    simulate.add_argument("--spool-dir", default="", metavar="DIR",
                          help="the publisher's disk spool (default: ~/.cache/trainmon/spool/simulate-<prefix>)")
    simulate.set_defaults(handler=_simulate)

    demo = commands.add_parser(
        "demo",
        help="the whole local stack with live data (what `make demo` runs), until Ctrl-C",
        description="Starts the services (if needed), topics, migrations, a processors worker, the dashboard, "
        "this machine's node daemon, a simulated cluster with faults and a real two-rank training job "
        "(examples/train_digits.py). Ctrl-C stops everything it started.",
    )
    demo.add_argument("--nodes", type=int, default=8, help="simulated nodes (default %(default)s)")
    demo.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (default %(default)s)")
    demo.add_argument("--epochs", type=int, default=300, help="epochs of the real training job (default %(default)s)")
    demo.add_argument("--fault", action="append", metavar="NAME",
                      help="a simulated fault (repeatable; default: nan, hot_gpu, straggler, stall, dead_node; "
                      "see `trainmon simulate --list-faults`)")
    demo.set_defaults(handler=_demo)

    config = commands.add_parser("config", help="print the effective settings and their environment variables")
    config.set_defaults(handler=_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_module.load(args.config)
        handler: Callable[[argparse.Namespace, settings_module.Settings], int] = args.handler
        return handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except TrainmonError as exc:
        print(f"trainmon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
