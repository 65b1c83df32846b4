"""Every alert rule kind against the real stack: a crafted stream makes it fire, then resolve.

One `trainmon process` worker (its own consumer group) runs a pipeline file with all ten kinds on
durations of seconds, and two routes: a signed webhook to a local Receiver, and the `alertmanager`
route to a real Alertmanager (Debian's prometheus-alertmanager, a second instance of our own under a
temporary home) whose webhook receiver is another local Receiver. The real agent publisher sends
contract events timed now, in real time; the scenarios run concurrently, each on its own runs and
hosts, and keep their ranks and nodes alive (1 Hz pulses) while they wait, so that only the rule
under test fires. Each waits for the firing alert at both receivers before it clears the condition
(or ends the run), so Alertmanager always has a firing to notify before the resolve. A clean run
(healthy metrics, busy GPUs, equal ranks) in the same worker fires nothing. ClickHouse must hold the
alerts (firing and resolved) and the delivery records of both routes.
"""

from __future__ import annotations

import hmac
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import pytest

from trainmon.agent.publisher import Publisher
from trainmon.deploy.services.alertmanager import AlertmanagerService, find_binary
from trainmon.deploy.services.base import ServiceError, pid_alive
from trainmon.stream_processors.routes.webhook import signature
from tests.conftest import IN_CI, with_own_topics
from tests.integration.test_alertmanager import free_port
from tests.integration.test_processors import scalar, start_worker, stop, wait_until
from tests.receivers import Received, Receiver
from tests.unit.alert_streams import gpu, heartbeat, metrics, run_end, system
from trainmon.clickhouse import connect
from trainmon.settings import Settings

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]  # every run and host of this module carries it
SECRET = "rule-kinds-secret"
WEBHOOK_ROUTE, AM_ROUTE = "signed-webhook", "oncall-alertmanager"
TIMEOUT_S = 5.0  # heartbeat_lost (both scopes)
STALL_S = 5.0
WAIT_S = 45.0  # generous: the machine has 2 cores and other tests may run beside this one

PIPELINE = f"""
windows: [10s]
alerting: {{repeat_interval: 1h, dashboard_url: "http://127.0.0.1:8501"}}
rules:
  - name: gpu_temperature_high
    kind: threshold
    for: 2s
    selector: {{figure: temperature_c, scope: gpu}}
    params: {{op: ">", value: 85}}
    annotations: {{summary: "GPU {{gpu}} on {{host}} at {{value:.0f}} C"}}
  - name: loss_non_finite
    kind: non_finite
    selector: {{metrics: [loss, val_loss]}}
    annotations: {{summary: "{{metric}} is NaN/Inf in run {{run}} (step {{step}}, rank {{rank}})"}}
  - name: loss_plateau
    kind: plateau
    severity: info
    selector: {{metric: loss, rank: 0}}
    params: {{mode: min, patience: 8}}
  - name: overfitting
    kind: divergence
    selector: {{train: loss, val: val_loss, rank: 0}}
    params: {{mode: opposite, patience: 2}}
  - name: loss_spike
    kind: spike
    selector: {{metrics: [grad_norm], rank: 0}}
    params: {{window: 20, min_points: 10, z: 6}}
  - name: run_stalled
    kind: stalled
    severity: critical
    params: {{stall_s: {STALL_S}, busy_percent: 50}}
  - name: rank_heartbeat_lost
    kind: heartbeat_lost
    severity: critical
    selector: {{scope: rank}}
    params: {{timeout_s: {TIMEOUT_S}}}
  - name: node_silent
    kind: heartbeat_lost
    severity: critical
    selector: {{scope: node}}
    params: {{timeout_s: {TIMEOUT_S}}}
  - name: gpu_idle
    kind: idle_gpu
    for: 3s
    params: {{below: 10}}
  - name: straggler
    kind: straggler
    for: 2s
    params: {{factor: 1.5, window_s: 4s, min_ranks: 2}}
  - name: gpu_hardware
    kind: hardware_errors
    severity: critical
    selector: {{checks: [ecc_uncorrected, throttle_thermal]}}
    params: {{window_s: 6s}}
routes:
  - name: {WEBHOOK_ROUTE}
    kind: webhook
    url: "{{webhook}}/trainmon"
    params: {{secret: {SECRET}}}
    timeout_s: 2
    retries: 3
    backoff_s: 200ms
  - name: {AM_ROUTE}
    kind: alertmanager
    url: "{{alertmanager}}"
    timeout_s: 2
    retries: 3
    backoff_s: 200ms
"""


# --- what arrives at the receivers ---------------------------------------------------------------


class Inbox:
    """The alerts a Receiver got, parsed once each: (request, alert) pairs, in arrival order."""

    def __init__(self, receiver: Receiver, parse: Callable[[Received], list[dict]]) -> None:
        self.receiver, self._parse = receiver, parse
        self._items: list[tuple[Received, dict]] = []
        self._seen = 0
        self._lock = threading.Lock()

    def items(self) -> list[tuple[Received, dict]]:
        with self._lock:
            new = self.receiver.requests[self._seen:]
            self._seen += len(new)
            self._items.extend((request, alert) for request in new for alert in self._parse(request))
            return list(self._items)


def webhook_alerts(request: Received) -> list[dict]:
    return [request.json()]  # the contract alert event itself


def alertmanager_alerts(request: Received) -> list[dict]:
    """Alertmanager's webhook payload (version 4): one notification, its alerts with their status."""
    note = request.json()
    assert note["version"] == "4", note
    return [{"rule": a["labels"]["alertname"], "state": a["status"], "labels": a["labels"]} for a in note["alerts"]]


@dataclass(frozen=True)
class Expect:
    """One alert a scenario must raise: its rule and the labels that identify its subject."""

    rule: str
    labels: Mapping[str, str]

    def fits(self, alert: Mapping[str, Any]) -> bool:
        return alert["rule"] == self.rule and all(alert["labels"].get(k) == v for k, v in self.labels.items())


# --- the crafted streams -------------------------------------------------------------------------


class Stream:
    """The publisher plus both inboxes, shared by the scenario threads."""

    def __init__(self, settings: Settings, publisher: Publisher, webhook: Inbox, alertmanager: Inbox) -> None:
        self.settings, self.publisher = settings, publisher
        self.webhook, self.alertmanager = webhook, alertmanager
        self.values: dict[str, int] = {}  # run -> training values published (rows in metric_points)
        self.published_at: dict[str, float] = {}  # scenario marks, time.monotonic()

    def publish(self, *events: dict) -> None:
        for event in events:
            if event["kind"] == "metrics":
                self.values[event["run"]] = self.values.get(event["run"], 0) + len(event["values"])
            assert self.publisher.publish(event)

    def seen(self, expect: Expect, state: str) -> bool:
        """The alert in `state` reached the webhook and, through Alertmanager, its receiver."""
        return (any(expect.fits(a) and a["state"] == state for _, a in self.webhook.items())
                and any(expect.fits(a) and a["state"] == state for _, a in self.alertmanager.items()))

    def pulse_until(self, pulse: Callable[[], None], done: Callable[[], bool], what: str,
                    timeout_s: float = WAIT_S) -> None:
        """Call pulse() once a second (the stream goes on in real time) until done() holds."""
        deadline = time.monotonic() + timeout_s
        beat = time.monotonic()
        while True:
            if time.monotonic() >= beat:
                pulse()
                beat += 1.0
            if done():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(0.05)

    def fire_then_resolve(self, expects: list[Expect], firing: Callable[[], None], clearing: Callable[[], None],
                          before_clearing: Callable[[], None] = lambda: None) -> None:
        self.pulse_until(firing, lambda: all(self.seen(e, "firing") for e in expects),
                         f"firing {expects} at the webhook and Alertmanager")
        before_clearing()
        self.pulse_until(clearing, lambda: all(self.seen(e, "resolved") for e in expects),
                         f"resolved {expects} at the webhook and Alertmanager")

    def end_run(self, run: str, ranks: range | list[int], pulse: Callable[[], None] = lambda: None) -> None:
        """run_end from each rank, once the worker has taken in every metrics event of the run.

        Metrics and run_end travel on different topics, so nothing orders them in the worker: a
        metrics event handled after its run's run_end brings the rank back into heartbeat_lost, which
        then reports it silent (a known product issue, not what this module tests). The worker writes
        an event's rows to ClickHouse after the rules saw it, so counting them is a sure wait."""
        client = connect(self.settings)
        try:
            expected = self.values.get(run, 0)
            self.pulse_until(pulse, lambda: scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}",
                                                   r=run) >= expected, f"the metrics of {run} in ClickHouse")
        finally:
            client.close()
        self.publish(*(run_end(time.time(), run, rank) for rank in ranks))


def now() -> float:
    return time.time()


@dataclass
class Scenario:
    kind: str
    name: str
    play: Callable[[Stream, "Scenario"], None]
    expects: list[Expect]
    runs: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    notes: dict[str, float] = field(default_factory=dict)

    def owns(self, alert: Mapping[str, Any]) -> bool:
        labels = alert["labels"]
        return labels.get("run") in self.runs or labels.get("host") in self.hosts or any(
            run in (labels.get("runs") or "").split(",") for run in self.runs)


def play_threshold(s: Stream, sc: Scenario) -> None:
    (host,) = sc.hosts

    def sample(temperature: float) -> Callable[[], None]:
        return lambda: s.publish(system(now(), host, gpus=[gpu(0, util_percent=90.0, temperature_c=temperature),
                                                          gpu(1, util_percent=90.0, temperature_c=60.0)],
                                        cpu_percent=20.0))

    s.fire_then_resolve(sc.expects, sample(92.0), sample(60.0))


def play_non_finite(s: Stream, sc: Scenario) -> None:
    (run,) = sc.runs
    step = 0

    def train(nan_rank: int | None = None) -> None:
        nonlocal step
        step += 1
        for rank in (0, 1):
            loss = "NaN" if rank == nan_rank else 1.0 / step  # as on the wire
            # step_time_s as a trainer logs it: else straggler derives the ranks' step times from these
            # events' microseconds apart, and one rank 1.5x the other pages for straggler here
            s.publish(metrics(step, now(), run, rank, host=f"{run}-h{rank}", loss=loss, step_time_s=1.0))

    def alive() -> None:
        s.publish(*(heartbeat(now(), run, rank, step=step, host=f"{run}-h{rank}") for rank in (0, 1)))

    for _ in range(3):
        train()
    s.published_at["non_finite"] = time.monotonic()
    train(nan_rank=1)  # rank 1 logs NaN: at once, no `for`
    s.fire_then_resolve(sc.expects, alive, train)  # a finite loss from rank 1 at a later step resolves it
    s.end_run(run, [0, 1], alive)


def play_plateau(s: Stream, sc: Scenario) -> None:
    (run,) = sc.runs
    losses = [1.0, 0.8, 0.6] + [0.6] * 9  # then flat: fires at step 9, its window of 8 values no better in its newer half
    for step, loss in enumerate(losses):
        s.publish(metrics(step, now(), run, 0, host=f"{run}-h0", loss=loss))
    alive = lambda: s.publish(heartbeat(now(), run, 0, host=f"{run}-h0"))  # noqa: E731
    s.fire_then_resolve(sc.expects, alive, alive,
                        before_clearing=lambda: s.publish(metrics(len(losses), now(), run, 0, host=f"{run}-h0",
                                                                  loss=0.3)))  # an improvement resolves it
    s.end_run(run, [0], alive)


def play_divergence(s: Stream, sc: Scenario) -> None:
    (run,) = sc.runs
    points = [(1.0, 1.0), (0.9, 1.1), (0.8, 1.2)]  # training loss falls while validation loss rises, twice
    for step, (loss, val) in enumerate(points):
        s.publish(metrics(step, now(), run, 0, host=f"{run}-h0", loss=loss, val_loss=val))
    alive = lambda: s.publish(heartbeat(now(), run, 0, host=f"{run}-h0"))  # noqa: E731
    s.fire_then_resolve(sc.expects, alive, alive,
                        before_clearing=lambda: s.publish(metrics(len(points), now(), run, 0, host=f"{run}-h0",
                                                                  loss=0.7, val_loss=1.0)))  # validation falls
    s.end_run(run, [0], alive)


def play_spike(s: Stream, sc: Scenario) -> None:
    (run,) = sc.runs
    step = 0

    def train(norm: float) -> Callable[[], None]:
        def send() -> None:
            nonlocal step
            step += 1
            s.publish(metrics(step, now(), run, 0, host=f"{run}-h0", grad_norm=norm + 0.01 * (step % 3)))
        return send

    for _ in range(12):  # 10 values before any verdict: the warm-up
        train(1.0)()
    s.fire_then_resolve(sc.expects, train(9.0), train(1.0))  # one value 800 robust sigmas up, then normal again
    s.end_run(run, [0], lambda: s.publish(heartbeat(now(), run, 0, host=f"{run}-h0")))


def play_stalled(s: Stream, sc: Scenario) -> None:
    (run,), (host,) = sc.runs, sc.hosts
    step = 0
    busy = lambda runs: s.publish(system(now(), host, runs=runs,  # noqa: E731
                                         gpus=[gpu(i, util_percent=97.0, temperature_c=70.0) for i in range(2)]))

    def train() -> None:
        nonlocal step
        step += 1
        s.publish(metrics(step, now(), run, 0, host=host, acc=step / 100))
        busy([run])

    for _ in range(3):
        train()
        time.sleep(0.5)

    def hung() -> None:  # alive, GPUs at 97 %, the step frozen: the NCCL hang
        s.publish(heartbeat(now(), run, 0, step=step, host=host))
        busy([run])

    def moving() -> None:  # the step advances; the node's next samples no longer list the run
        nonlocal step
        step += 1
        s.publish(metrics(step, now(), run, 0, host=host, acc=step / 100))
        busy([])

    s.fire_then_resolve(sc.expects, hung, moving)
    s.end_run(run, [0], lambda: s.publish(heartbeat(now(), run, 0, step=step, host=host)))


def play_rank_lost(s: Stream, sc: Scenario) -> None:
    """Rank 1 goes silent; it comes back (first run), or the run ends (second run)."""
    back, ended = sc.runs
    host = lambda rank: f"{TAG}-hb-h{rank}"  # noqa: E731
    beat = lambda run, ranks: s.publish(*(heartbeat(now(), run, r, host=host(r)) for r in ranks))  # noqa: E731
    for _ in range(2):
        beat(back, (0, 1))
        beat(ended, (0, 1))
        time.sleep(1.0)
    firing = lambda: (beat(back, (0,)), beat(ended, (0,)))  # noqa: E731
    s.pulse_until(firing, lambda: all(s.seen(e, "firing") for e in sc.expects), f"firing {sc.expects}")
    s.publish(run_end(now(), ended, 0))  # the run ends: its lost rank is forgotten, its alert resolved
    s.pulse_until(lambda: beat(back, (0, 1)), lambda: all(s.seen(e, "resolved") for e in sc.expects),
                  f"resolved {sc.expects}")
    s.end_run(back, [0, 1])


def play_node_silent(s: Stream, sc: Scenario) -> None:
    (host,) = sc.hosts
    sample = lambda runs: s.publish(system(now(), host, runs=runs,  # noqa: E731
                                           gpus=[gpu(0, util_percent=95.0, temperature_c=65.0)]))
    for _ in range(2):
        sample([f"{TAG}-job"])
        time.sleep(1.0)
    s.fire_then_resolve(sc.expects, lambda: None, lambda: sample([f"{TAG}-job"]))  # silent, then heard again
    sample([])  # the job is over: the node is no longer watched


def play_idle_gpu(s: Stream, sc: Scenario) -> None:
    (host,) = sc.hosts
    job = [f"{TAG}-idle-job"]

    def sample(util: float, runs: list[str] = job) -> Callable[[], None]:
        return lambda: s.publish(system(now(), host, runs=runs, gpus=[gpu(0, util_percent=util, temperature_c=40.0),
                                                                     gpu(1, util_percent=95.0, temperature_c=70.0)]))

    s.fire_then_resolve(sc.expects, sample(2.0), sample(80.0))  # GPU 0 idle during a job, then busy
    sample(80.0, [])()


def play_straggler(s: Stream, sc: Scenario) -> None:
    (run,) = sc.runs
    step = 0

    def train(slow: float) -> Callable[[], None]:
        def pulse() -> None:
            nonlocal step
            step += 1
            s.publish(*(metrics(step, now(), run, rank, host=f"{run}-h{rank}", step_time_s=slow if rank == 2 else 1.0)
                        for rank in range(3)))
        return pulse

    s.fire_then_resolve(sc.expects, train(3.0), train(1.0))  # rank 2 takes 3x the median, then catches up
    s.end_run(run, range(3), train(1.0))


def play_hardware(s: Stream, sc: Scenario) -> None:
    (host,) = sc.hosts

    def sample(ecc: int, throttle: int) -> Callable[[], None]:
        return lambda: s.publish(system(now(), host, gpus=[
            gpu(0, util_percent=90.0, temperature_c=60.0, ecc_uncorrected=ecc, throttle_thermal=0),
            gpu(1, util_percent=90.0, temperature_c=60.0, ecc_uncorrected=0, throttle_thermal=throttle)]))

    for _ in range(2):
        sample(0, 0)()
        time.sleep(1.0)
    # GPU 0: two uncorrectable ECC errors (active while the rise is within 6 s); GPU 1: thermal throttling
    s.fire_then_resolve(sc.expects, sample(2, 1), sample(2, 0))


def play_clean(s: Stream, sc: Scenario) -> None:
    """Two equal ranks on two busy nodes, loss and validation loss improving: nothing may fire."""
    (run,), hosts = sc.runs, sc.hosts
    for step in range(1, 13):
        t = now()
        for rank in (0, 1):
            s.publish(metrics(step, t, run, rank, host=hosts[rank], loss=1.0 / step, val_loss=1.2 / step,
                              step_time_s=0.5))
            s.publish(heartbeat(t, run, rank, step=step, host=hosts[rank]))
        for host in hosts:
            s.publish(system(t, host, runs=[run], mem_used_percent=40.0, gpus=[
                gpu(i, util_percent=95.0, temperature_c=70.0, ecc_uncorrected=3, throttle_thermal=0,
                    mem_used_bytes=10e9, mem_total_bytes=80e9) for i in range(2)]))
        time.sleep(1.0)
    for host in hosts:  # the job ends on both nodes
        s.publish(system(now(), host, runs=[], gpus=[gpu(i, util_percent=0.0) for i in range(2)]))
    s.end_run(run, [0, 1], lambda: s.publish(*(heartbeat(now(), run, r, step=12, host=hosts[r]) for r in (0, 1))))
    sc.notes["ended"] = time.monotonic()


def scenarios() -> list[Scenario]:
    r = lambda name: f"{TAG}-{name}"  # noqa: E731
    return [
        Scenario("threshold", "threshold", play_threshold,
                 [Expect("gpu_temperature_high", {"host": r("thr-h"), "gpu": "0"})], hosts=(r("thr-h"),)),
        Scenario("non_finite", "non_finite", play_non_finite,
                 [Expect("loss_non_finite", {"run": r("nan"), "metric": "loss"})], runs=(r("nan"),)),
        Scenario("plateau", "plateau", play_plateau,
                 [Expect("loss_plateau", {"run": r("plateau"), "metric": "loss"})], runs=(r("plateau"),)),
        Scenario("divergence", "divergence", play_divergence,
                 [Expect("overfitting", {"run": r("diverge"), "metric": "val_loss"})], runs=(r("diverge"),)),
        Scenario("spike", "spike", play_spike,
                 [Expect("loss_spike", {"run": r("spike"), "metric": "grad_norm"})], runs=(r("spike"),)),
        Scenario("stalled", "stalled", play_stalled,
                 [Expect("run_stalled", {"run": r("stall")})], runs=(r("stall"),), hosts=(r("stall-h"),)),
        Scenario("heartbeat_lost", "rank_lost", play_rank_lost,
                 [Expect("rank_heartbeat_lost", {"run": r("hb-back"), "rank": "1", "host": r("hb-h1")}),
                  Expect("rank_heartbeat_lost", {"run": r("hb-ended"), "rank": "1", "host": r("hb-h1")})],
                 runs=(r("hb-back"), r("hb-ended"))),
        Scenario("heartbeat_lost", "node_silent", play_node_silent,
                 [Expect("node_silent", {"host": r("node-h")})], hosts=(r("node-h"),)),
        Scenario("idle_gpu", "idle_gpu", play_idle_gpu,
                 [Expect("gpu_idle", {"host": r("idle-h"), "gpu": "0", "runs": r("idle-job")})],
                 hosts=(r("idle-h"),)),
        Scenario("straggler", "straggler", play_straggler,
                 [Expect("straggler", {"run": r("strag"), "rank": "2", "host": f"{r('strag')}-h2"})],
                 runs=(r("strag"),)),
        Scenario("hardware_errors", "hardware_errors", play_hardware,
                 [Expect("gpu_hardware", {"host": r("hw-h"), "gpu": "0", "check": "ecc_uncorrected"}),
                  Expect("gpu_hardware", {"host": r("hw-h"), "gpu": "1", "check": "throttle_thermal"})],
                 hosts=(r("hw-h"),)),
        Scenario("clean", "clean", play_clean, [], runs=(r("clean"),), hosts=(r("clean-h0"), r("clean-h1"))),
    ]


KINDS = ["threshold", "non_finite", "plateau", "divergence", "spike", "stalled", "heartbeat_lost", "idle_gpu",
         "straggler", "hardware_errors"]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AlertmanagerService, Receiver]]:
    """Our own Alertmanager (the session's has no receiver), notifying a local Receiver; stopped by PID."""
    try:
        find_binary()
    except ServiceError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and Alertmanager is unavailable: {exc}", pytrace=False)
        pytest.skip(str(exc))
    with Receiver() as receiver:
        settings = Settings(services_home=str(tmp_path_factory.mktemp("alertmanager-home")),
                            services_alertmanager_port=free_port(),
                            services_alertmanager_webhook_url=f"{receiver.url}/alertmanager")
        service = AlertmanagerService(settings)
        status = service.start(progress=lambda message: None)
        try:
            assert status.healthy, status
            yield service, receiver
        finally:
            service.stop(progress=lambda message: None)
            assert status.pid is not None and not pid_alive(status.pid)


@dataclass
class Outcome:
    scenarios: list[Scenario]
    webhook: Inbox
    alertmanager: Inbox
    settings: Settings
    latency_ms: float | None = None
    seconds: float = 0.0

    def of(self, kind: str) -> list[Scenario]:
        return [sc for sc in self.scenarios if sc.kind == kind]


@pytest.fixture(scope="module")
def module_topics(migrated: Settings) -> Settings:
    return with_own_topics(migrated)  # the worker reads from the start: only this module's events


@pytest.fixture(scope="module")
def outcome(module_topics: Settings, tmp_path_factory: pytest.TempPathFactory, webhook: Receiver,
            alertmanager: tuple[AlertmanagerService, Receiver]) -> Iterator[Outcome]:
    """One worker for the module; every scenario played against it at once."""
    service, am_receiver = alertmanager
    directory = tmp_path_factory.mktemp("rule-kinds")
    pipeline = directory / "pipeline.yml"
    pipeline.write_text(PIPELINE.replace("{webhook}", webhook.url).replace("{alertmanager}", service.address))
    log = directory / "worker.log"
    worker = start_worker(module_topics, pipeline, f"rule-kinds-{TAG}", log)
    publisher = Publisher(module_topics, spool_dir=directory / "spool")
    stream = Stream(module_topics, publisher, Inbox(webhook, webhook_alerts), Inbox(am_receiver, alertmanager_alerts))
    try:
        ready(stream, worker, log)
        plays = scenarios()
        started = time.monotonic()

        def play(sc: Scenario) -> None:
            begun = time.monotonic()
            try:
                sc.play(stream, sc)
            except BaseException:  # reported by the test of its kind, with the traceback
                sc.error = traceback.format_exc()
            sc.seconds = time.monotonic() - begun

        with ThreadPoolExecutor(len(plays), thread_name_prefix="scenario") as pool:
            list(pool.map(play, plays))
        result = Outcome(plays, stream.webhook, stream.alertmanager, module_topics, seconds=time.monotonic() - started)
        nan = Expect("loss_non_finite", {"run": f"{TAG}-nan"})
        arrived = [request.at for request, a in result.webhook.items() if nan.fits(a) and a["state"] == "firing"]
        if arrived and "non_finite" in stream.published_at:
            result.latency_ms = (arrived[0] - stream.published_at["non_finite"]) * 1000
        yield result
    finally:
        publisher.close()
        stop(worker)
    assert worker.returncode == 0, log.read_text()[-3000:]


def ready(stream: Stream, worker, log) -> None:
    """The worker consumes: a probe run's rows reach ClickHouse (also drains any backlog of the session)."""
    probes = [f"{TAG}-probe-{i}" for i in range(8)]  # several keys: most partitions get one
    for run in probes:
        stream.publish(metrics(0, now(), run, 0, host=f"{TAG}-probe-h", acc=1.0))
    for run in probes:
        stream.publish(run_end(now(), run, 0))
    client = connect(stream.settings)
    try:
        wait_until(lambda: worker.poll() is not None or scalar(
            client, "SELECT count() FROM metric_points WHERE run IN ({r:Array(String)})", r=probes) == len(probes),
            90, "the worker to consume")
    finally:
        client.close()
    assert worker.poll() is None, log.read_text()[-3000:]


# --- the checks ----------------------------------------------------------------------------------


def states(inbox: Inbox, expect: Expect) -> list[str]:
    return [a["state"] for _, a in inbox.items() if expect.fits(a)]


@pytest.mark.parametrize("kind", KINDS)
def test_rule_kind_fires_and_resolves(outcome: Outcome, kind: str, capsys: pytest.CaptureFixture) -> None:
    plays = outcome.of(kind)
    for sc in plays:
        assert sc.error is None, f"scenario {sc.name}:\n{sc.error}"
    client = connect(outcome.settings)
    try:
        for sc in plays:
            for expect in sc.expects:
                # the webhook: exactly one firing, then one resolved (de-duplicated, no repeats), signed
                received = [(r, a) for r, a in outcome.webhook.items() if expect.fits(a)]
                assert [a["state"] for _, a in received] == ["firing", "resolved"], (expect, received)
                (_, fired), (_, resolved) = received
                assert fired["fingerprint"] == resolved["fingerprint"] and fired["starts_at"] == resolved["starts_at"]
                assert resolved["ends_at"] >= fired["starts_at"]
                assert fired["annotations"]["dashboard_url"].startswith("http://127.0.0.1:8501/")
                for request, _ in received:
                    stamp = request.header("X-Trainmon-Timestamp")
                    assert hmac.compare_digest(request.header("X-Trainmon-Signature"),
                                               signature(SECRET, stamp, request.body))
                # Alertmanager notified its receiver of the firing, then of the resolve
                sent = states(outcome.alertmanager, expect)
                assert sent[:1] == ["firing"] and "resolved" in sent, (expect, sent)
                # ClickHouse: the alert's firing and resolved rows
                wait_until(lambda: {row[0] for row in client.query(
                    "SELECT state FROM alerts FINAL WHERE fingerprint = {f:String} AND rule = {r:String}",
                    parameters={"f": fired["fingerprint"], "r": expect.rule}).result_rows} == {"firing", "resolved"},
                    30, f"the alerts rows of {expect}")
            # nothing else fired for this scenario's runs and hosts
            rules = {expect.rule for expect in sc.expects}
            stray = [a for _, a in outcome.webhook.items() if sc.owns(a) and a["rule"] not in rules]
            assert not stray, f"{sc.name}: other rules fired: {stray}"
        if kind == "non_finite":
            assert outcome.latency_ms is not None
            with capsys.disabled():
                print(f"\nnon_finite alert latency (event published -> webhook received): {outcome.latency_ms:.0f} ms; "
                      f"scenarios took {outcome.seconds:.1f} s: "
                      + ", ".join(f"{sc.name} {sc.seconds:.1f}s" for sc in outcome.scenarios))
            assert outcome.latency_ms < 10_000
    finally:
        client.close()


def test_specific_firing_details(outcome: Outcome) -> None:
    """The `for` delays were honoured (in event time), and the values say why each alert fired."""
    firing = {a["rule"] + "/" + a["labels"].get("check", ""): a for _, a in outcome.webhook.items()
              if a["state"] == "firing" and any(sc.owns(a) for sc in outcome.scenarios)}
    for rule, held_s in (("gpu_temperature_high/", 2.0), ("gpu_idle/", 3.0), ("straggler/", 2.0)):
        assert firing[rule]["time"] - firing[rule]["starts_at"] >= held_s, firing[rule]
    assert firing["run_stalled/"]["values"]["stalled_s"] >= STALL_S
    assert firing["run_stalled/"]["values"]["gpu_util_percent"] == 97.0
    assert firing["rank_heartbeat_lost/"]["values"]["silent_s"] > TIMEOUT_S
    assert firing["node_silent/"]["values"]["silent_s"] > TIMEOUT_S
    assert firing["straggler/"]["values"]["ratio"] == 3.0
    assert firing["loss_non_finite/"]["values"]["rank"] == 1 and firing["loss_non_finite/"]["severity"] == "critical"
    assert firing["loss_plateau/"]["values"]["steps"] == 8.0
    assert firing["overfitting/"]["values"]["evaluations"] == 2
    assert firing["gpu_hardware/ecc_uncorrected"]["values"]["increase"] == 2
    assert firing["gpu_temperature_high/"]["annotations"]["summary"] == f"GPU 0 on {TAG}-thr-h at 92 C"


def test_clean_run_fires_nothing(outcome: Outcome) -> None:
    (clean,) = outcome.of("clean")
    assert clean.error is None, clean.error
    # Long enough after the clean run ended for any late heartbeat_lost/stalled verdict to have come out.
    wait_until(lambda: time.monotonic() - clean.notes["ended"] > max(TIMEOUT_S, STALL_S) + 2, 30, "the quiet period")
    assert not [a for _, a in outcome.webhook.items() if clean.owns(a)]
    assert not [a for _, a in outcome.alertmanager.items() if clean.owns(a)]
    client = connect(outcome.settings)
    try:
        assert scalar(client, "SELECT count() FROM alerts WHERE run = {r:String} OR labels['host'] IN "
                      "({h:Array(String)})", r=clean.runs[0], h=list(clean.hosts)) == 0
        assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", r=clean.runs[0]) == 12 * 2 * 3
    finally:
        client.close()


def test_deliveries_recorded_for_both_routes(outcome: Outcome) -> None:
    fingerprints = sorted({a["fingerprint"] for sc in outcome.scenarios for e in sc.expects
                           for _, a in outcome.webhook.items() if e.fits(a)})
    assert len(fingerprints) == sum(len(sc.expects) for sc in outcome.scenarios)
    client = connect(outcome.settings)
    try:
        def delivered() -> set[tuple[str, str, str]]:
            return set(client.query(
                "SELECT fingerprint, route, state FROM alert_deliveries WHERE outcome = 'delivered' "
                "AND http_status = 200 AND fingerprint IN ({f:Array(String)})", parameters={"f": fingerprints}
            ).result_rows)
        expected = {(f, route, state) for f in fingerprints for route in (WEBHOOK_ROUTE, AM_ROUTE)
                    for state in ("firing", "resolved")}
        wait_until(lambda: delivered() >= expected, 30, "delivered rows for both routes, firing and resolved")
    finally:
        client.close()
