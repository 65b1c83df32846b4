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
