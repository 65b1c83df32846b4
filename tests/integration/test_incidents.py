"""Incidents on the real stack: a dead node is one page, a straggler on a throttling GPU is that GPU's page.

One `trainmon process` worker with an `incidents` section, a signed webhook and a real Alertmanager
(grouping by the `incident` label, as trainmon's own config does). Two crafted scenarios play at once
on their own hosts and runs, in real time through the agent's publisher:
- dead node: a node and its two ranks beat at 1 Hz, then all fall silent together: node_silent and
  two rank_heartbeat_lost, one incident rooted at node_silent; back to life, it resolves once.
- throttled GPU: three ranks on one node, GPU 1 thermal-throttles and its rank takes 3x the step
  time: gpu_throttled and straggler, one incident rooted at gpu_throttled naming GPU 1.
Every page at the webhook, every Alertmanager notification and the `incidents` rows are counted.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trainmon.agent.publisher import Publisher
from tests.integration.test_processors import start_worker, stop, wait_until
from tests.integration.test_rule_kinds import alertmanager, webhook  # noqa: F401 (fixtures)
from tests.receivers import Receiver
from tests.unit.alert_streams import gpu, heartbeat, metrics, run_end, system
from trainmon.clickhouse import connect
from trainmon.contract import envelope
from trainmon.settings import Settings

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
PIPELINE = """
windows: [10s]
alerting: {repeat_interval: 1h}
rules:
  - {name: node_silent, kind: heartbeat_lost, severity: critical, selector: {scope: node},
     params: {missed: 3, min_timeout_s: 2s, timeout_s: 5s}}
  - {name: rank_heartbeat_lost, kind: heartbeat_lost, severity: critical, selector: {scope: rank},
     params: {missed: 3, min_timeout_s: 2s, timeout_s: 5s}}
  - {name: gpu_throttled, kind: hardware_errors, for: 2s, selector: {checks: [throttle_thermal]},
     params: {clear_s: 2s}, annotations: {summary: "GPU {gpu} on {host} is throttling: {check}"}}
  - {name: straggler, kind: straggler, for: 2s, params: {factor: 1.5, window_s: 4s, min_ranks: 2}}
incidents:
  group_wait: 2s
  group_interval: 2s
  causes:
    - {rule: node_silent, explains: [rank_heartbeat_lost, straggler]}
    - {rule: gpu_throttled, explains: [straggler]}
routes:
  - {name: hook, kind: webhook, url: "{webhook}/trainmon", params: {secret: s}, timeout_s: 2, retries: 3}
  - {name: am, kind: alertmanager, url: "{alertmanager}", timeout_s: 2, retries: 3}
"""


def now() -> float:
    return time.time()


def pulse_for(seconds: float, pulse: Callable[[], None]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pulse()
        time.sleep(1.0)


def pages(receiver: Receiver, host: str) -> list[dict]:
    """Webhook notifications with a member on `host`, in arrival order."""
    out = [r.json() for r in list(receiver.requests)]
    return [n for n in out if any(m["labels"].get("host") == host for m in n.get("members", ()))]


def am_notes(receiver: Receiver, host: str) -> list[dict]:
    notes = [r.json() for r in list(receiver.requests)]
    return [n for n in notes if any(a["labels"].get("host") == host for a in n["alerts"])]


class Cluster:
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.step = 0

    def publish(self, *events: dict) -> None:
        for event in events:
            assert self.publisher.publish(event)


def dead_node(c: Cluster, host: str, run: str, alive: threading.Event) -> None:
    def pulse() -> None:
        c.publish(system(now(), host, runs=[run], gpus=[gpu(0, util_percent=95.0), gpu(1, util_percent=95.0)]),
                  *(heartbeat(now(), run, rank, host=host) for rank in range(2)))

    pulse_for(6, pulse)  # cadences learnt
    alive.wait(60)  # silent until the test has counted the pages
    pulse_for(4, pulse)  # back: everything resolves
    c.publish(*(run_end(now(), run, rank) for rank in range(2)))


def throttled_gpu(c: Cluster, host: str, run: str, cool: threading.Event) -> None:
    c.publish(*(envelope("run_start", project="p", run=run, rank=rank, host=host, time=now(), world_size=3,
                         local_rank=rank) for rank in range(3)))
    step = 0

    def pulse(hot: bool) -> Callable[[], None]:
        def send() -> None:
            nonlocal step
            step += 1
            c.publish(system(now(), host, runs=[run], gpus=[
                gpu(i, util_percent=95.0, throttle_thermal=1 if hot and i == 1 else 0) for i in range(3)]),
                *(metrics(step, now(), run, rank, host=host, step_time_s=3.0 if hot and rank == 1 else 1.0)
                  for rank in range(3)))
        return send

    pulse_for(5, pulse(False))
    while not cool.is_set():
        pulse(True)()
        time.sleep(1.0)
    pulse_for(8, pulse(False))
    c.publish(*(run_end(now(), run, rank) for rank in range(3)))


def pipeline_file(tmp_path: Path, webhook: Receiver, alertmanager) -> Path:
    service, _ = alertmanager
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE.replace("{webhook}", webhook.url).replace("{alertmanager}", service.address))
    return pipeline


@pytest.fixture
def worker_and_routes(own_topics: Settings, tmp_path: Path, webhook: Receiver,  # noqa: F811
                      alertmanager) -> Iterator[tuple[Settings, Receiver, Receiver]]:  # noqa: F811
    _, am_receiver = alertmanager
    pipeline = pipeline_file(tmp_path, webhook, alertmanager)
    worker = start_worker(own_topics, pipeline, f"incidents-{TAG}", tmp_path / "worker.log")
    try:
        yield own_topics, webhook, am_receiver
    finally:
        stop(worker)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_a_dead_node_is_one_page_and_a_straggler_on_a_throttling_gpu_is_that_gpus(worker_and_routes) -> None:
    settings, hook, am = worker_and_routes
    node, node_run, hot, hot_run = f"{TAG}-dead", f"{TAG}-dead-run", f"{TAG}-hot", f"{TAG}-hot-run"
    publisher = Publisher(settings, spool_dir=Path(settings.home) / f"spool-{TAG}")
    cluster, alive, cool = Cluster(publisher), threading.Event(), threading.Event()
    players = [threading.Thread(target=dead_node, args=(cluster, node, node_run, alive)),
               threading.Thread(target=throttled_gpu, args=(cluster, hot, hot_run, cool))]
    try:
        for player in players:
            player.start()

        def members(host: str) -> set[tuple[str, str]]:
            found = pages(hook, host)
            return {(m["rule"], m["labels"].get("rank", m["labels"].get("gpu", ""))) for m in found[-1]["members"]} if found else set()

        wait_until(lambda: members(node) >= {("node_silent", ""), ("rank_heartbeat_lost", "0"),
                                             ("rank_heartbeat_lost", "1")}, 60, "the dead node's incident")
        wait_until(lambda: ("straggler", "1") in members(hot), 90, "the straggler to join the throttled GPU's incident")
        time.sleep(3)  # any stray page would have come by now (group_wait and group_interval are 2 s)
        dead, throttled = pages(hook, node), pages(hook, hot)
        assert len({n["fingerprint"] for n in dead}) == 1, [(n["rule"], n["members_total"]) for n in dead]
        assert dead[-1]["rule"] == "node_silent" and dead[-1]["labels"]["incident"] == dead[-1]["fingerprint"]
        assert dead[-1]["severity"] == "critical" and "explains 2 rank_heartbeat_lost" in dead[-1]["annotations"]["summary"]
        assert len({n["fingerprint"] for n in throttled}) == 1, [(n["rule"], n["members_total"]) for n in throttled]
        assert throttled[-1]["rule"] == "gpu_throttled"
        assert throttled[-1]["annotations"]["cause"] == f"gpu_throttled: GPU 1 on {hot} is throttling: throttle_thermal"
        straggler = next(m for m in throttled[-1]["members"] if m["rule"] == "straggler")
        assert (straggler["labels"]["gpu"], straggler["labels"]["rank"]) == ("1", "1")
        # Alertmanager: the members, labelled with their incident, grouped into one notification each
        wait_until(lambda: len({a["labels"]["alertname"] for n in am_notes(am, node) for a in n["alerts"]}) == 2,
                   30, "Alertmanager's notification of the dead node's members")
        groups = {n["groupKey"] for n in am_notes(am, node)}
        assert len(groups) == 1 and all(n["groupLabels"] == {"incident": dead[-1]["fingerprint"]} for n in am_notes(am, node))

        alive.set()
        cool.set()
        wait_until(lambda: pages(hook, node)[-1]["state"] == "resolved" and pages(hook, hot)[-1]["state"] == "resolved",
                   60, "both incidents to resolve")
        for host in (node, hot):
            assert [n["state"] for n in pages(hook, host)].count("resolved") == 1
        client = connect(settings)
        try:
            def rows() -> dict[str, tuple]:
                return {r[0]: r[1:] for r in client.query(
                    "SELECT incident, state, rule, member_rules, members_total, hosts FROM incidents FINAL "
                    "WHERE incident IN {ids:Array(String)}",
                    parameters={"ids": [dead[-1]["fingerprint"], throttled[-1]["fingerprint"]]}).result_rows}
            wait_until(lambda: {r[0] for r in rows().values()} == {"resolved"} and len(rows()) == 2, 30, "incidents rows")
            state, rule, member_rules, total, hosts = rows()[dead[-1]["fingerprint"]]
            assert (rule, sorted(member_rules), total, hosts) == (
                "node_silent", ["node_silent", "rank_heartbeat_lost", "rank_heartbeat_lost"], 3, [node])
            assert rows()[throttled[-1]["fingerprint"]][1] == "gpu_throttled"
        finally:
            client.close()
    finally:
        alive.set()
        cool.set()
        for player in players:
            player.join(60)
        publisher.close()


def test_the_worker_holding_the_incidents_sigkilled_mid_incident_neither_repeats_nor_loses_its_page(
        own_topics: Settings, tmp_path: Path, webhook: Receiver, alertmanager) -> None:  # noqa: F811
    """The incident book lives in partition 0's snapshotted state: SIGKILLed after the dead node's page,
    the next worker restores it, so the members' resolves close that same incident once (a lost book
    would ignore them: the incident would never resolve; a stale one would page again)."""
    node, run, group = f"{TAG}-k-dead", f"{TAG}-k-run", f"incidents-kill-{TAG}"
    pipeline = pipeline_file(tmp_path, webhook, alertmanager)
    first = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
    second = None
    publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
    alive = threading.Event()
    player = threading.Thread(target=dead_node, args=(Cluster(publisher), node, run, alive))
    try:
        player.start()
        wait_until(lambda: any(len(n["members"]) >= 3 for n in pages(webhook, node)), 60, "the dead node's incident")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
        time.sleep(8)  # the group gives the dead member's partitions to the new one (6 s session timeout)
        alive.set()  # the node and its ranks come back: every member resolves
        wait_until(lambda: pages(webhook, node)[-1]["state"] == "resolved", 60, "the incident's resolve")
        time.sleep(3)  # a repeated page or a second resolve would have come by now
        found = pages(webhook, node)
        assert len({n["fingerprint"] for n in found}) == 1, [(n["rule"], n["state"]) for n in found]
        assert [n["state"] for n in found].count("resolved") == 1 and found[-1]["members_total"] == 3
        assert found[0]["state"] == "firing" and found[-1]["rule"] == "node_silent"
    finally:
        alive.set()
        player.join(60)
        publisher.close()
        stop(first)
        if second is not None:
            stop(second)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
