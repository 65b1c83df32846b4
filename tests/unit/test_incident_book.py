"""The incident book: one page per root cause, the likely cause named, nothing lost on a restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainmon.stream_processors.alerts import fingerprint
from trainmon.stream_processors.config import PipelineConfigError, load_pipeline
from trainmon.stream_processors.incidents import Cause, IncidentBook, IncidentSpec
from trainmon.stream_processors.snapshots import dumps, loads

SYMPTOMS_OF_NODE = frozenset({"rank_heartbeat_lost", "run_stalled", "straggler", "gpu_idle"})
SPEC = IncidentSpec(
    causes=(Cause("node_silent", SYMPTOMS_OF_NODE),
            Cause("rank_heartbeat_lost", frozenset({"run_stalled"})),
            Cause("gpu_throttled", frozenset({"straggler"})),
            Cause("loss_non_finite", frozenset({"loss_spike"}), by=("run",))),
    group_wait_s=2.0, group_interval_s=30.0, repeat_interval_s=3600.0)
SEVERITY = {"node_silent": "critical", "rank_heartbeat_lost": "critical", "run_stalled": "critical",
            "loss_non_finite": "critical"}


def alert(rule: str, at: float, state: str = "firing", starts_at: float | None = None, run: str | None = None,
          **subject: str) -> dict:
    if run is not None:
        subject = {"project": "p", "run": run, **subject}
    labels = {**subject, "alertname": rule}
    return {"v": 1, "kind": "alert", "rule": rule, "fingerprint": fingerprint(rule, subject, {}), "state": state,
            "severity": SEVERITY.get(rule, "warning"), "labels": labels,
            "annotations": {"summary": f"{rule} {' '.join(f'{k}={v}' for k, v in sorted(subject.items()))}"},
            "values": {"x": 1.0}, "starts_at": at if starts_at is None else starts_at, "time": at,
            "project": "p" if run else None, "run": run,
            **({"ends_at": at} if state == "resolved" else {})}


def dead_node(book: IncidentBook) -> list[dict]:
    """Ranks 0-3 of run r on host h go silent at t=100..100.6, the node at 100.9."""
    out = []
    for rank in range(4):
        out += book.add(alert("rank_heartbeat_lost", 100 + rank * 0.2, run="r", rank=str(rank), host="h"), 100 + rank * 0.2)
    out += book.tick(100.8)
    out += book.add(alert("node_silent", 100.9, host="h"), 100.9)
    return out


def test_a_dead_node_is_one_page_naming_the_node_and_its_members() -> None:
    book = IncidentBook(SPEC)
    (page,) = dead_node(book)
    assert page["rule"] == "node_silent" and page["labels"]["host"] == "h"
    assert page["fingerprint"] == page["labels"]["incident"] == page["incident"]
    assert page["members_total"] == 5 and sorted(m["rule"] for m in page["members"]) == [
        "node_silent", *["rank_heartbeat_lost"] * 4]
    assert page["annotations"]["cause"] == "node_silent: node_silent host=h"
    assert page["annotations"]["summary"].endswith("(explains 4 rank_heartbeat_lost)")
    assert page["severity"] == "critical" and page["starts_at"] == 100.0
    # the run stalls 20 s later: it joins (through its silent ranks), told in the next update
    assert book.add(alert("run_stalled", 121, run="r"), 121) == []
    assert book.tick(125) == []  # group_interval (30 s) since the first notification not over
    (update,) = book.tick(131)
    assert update["fingerprint"] == page["fingerprint"] and update["members_total"] == 6
    assert book.tick(200) == []  # nothing changed since


def test_the_incident_resolves_once_when_every_member_has() -> None:
    book = IncidentBook(SPEC)
    page, = dead_node(book)
    members = [alert("rank_heartbeat_lost", 150, "resolved", 100 + r * 0.2, run="r", rank=str(r), host="h")
               for r in range(4)]
    out = [n for m in members for n in book.add(m, 150)]
    out += book.tick(150)  # members resolving are an update, at the group interval (already over)
    assert [n["state"] for n in out] == ["firing"]
    (resolved,) = book.add(alert("node_silent", 151, "resolved", 100.9, host="h"), 151)
    assert resolved["state"] == "resolved" and resolved["fingerprint"] == page["fingerprint"]
    assert resolved["ends_at"] == 151 and len(book) == 0 and not book.open


def test_a_symptom_alone_waits_group_wait_then_pages_as_its_own_incident() -> None:
    book = IncidentBook(SPEC)
    assert book.add(alert("rank_heartbeat_lost", 100, run="r", rank="3", host="h"), 100) == []
    assert book.tick(101.9) == []
    (page,) = book.tick(102.0)
    assert page["rule"] == "rank_heartbeat_lost" and page["members_total"] == 1
    assert "(explains" not in page["annotations"]["summary"]


def test_a_cause_pages_at_once() -> None:
    book = IncidentBook(SPEC)
    (page,) = book.add(alert("loss_non_finite", 100, run="r", rank="0"), 100)
    assert page["rule"] == "loss_non_finite" and page["time"] == 100
    assert book.add(alert("loss_spike", 100.5, run="r", rank="0", host="h"), 100.5) == []  # joins by run
    assert len(book.open) == 1


def test_a_straggler_on_a_throttling_gpu_joins_its_incident_and_one_on_another_gpu_does_not() -> None:
    book = IncidentBook(SPEC)
    (page,) = book.add(alert("gpu_throttled", 100, host="x", gpu="3", check="throttle_thermal"), 100)
    assert book.add(alert("straggler", 110, run="r", rank="5", host="x", gpu="3"), 110) == []
    assert book.add(alert("straggler", 111, run="r", rank="6", host="x", gpu="2"), 111) == []
    (other,) = book.tick(113.1)  # the one on GPU 2 waited for a cause, then paged on its own
    assert other["rule"] == "straggler" and other["labels"]["gpu"] == "2"
    (update,) = book.tick(130)
    assert update["fingerprint"] == page["fingerprint"] and update["rule"] == "gpu_throttled"
    assert update["annotations"]["summary"] == "gpu_throttled check=throttle_thermal gpu=3 host=x (explains 1 straggler)"


def test_a_cause_found_after_its_symptom_paged_becomes_the_root_of_the_same_incident() -> None:
    book = IncidentBook(SPEC)
    book.add(alert("straggler", 100, run="r", rank="5", host="x", gpu="3"), 100)
    (first,) = book.tick(102)
    (update,) = book.add(alert("gpu_throttled", 104, host="x", gpu="3", check="throttle_thermal"), 104)
    assert update["fingerprint"] == first["fingerprint"]  # the same page, now naming its cause
    assert (first["rule"], update["rule"]) == ("straggler", "gpu_throttled")
    assert update["labels"]["gpu"] == "3" and update["annotations"]["cause"].startswith("gpu_throttled: ")


def test_alerts_of_one_rule_on_one_host_are_one_incident_and_other_hosts_are_not() -> None:
    book = IncidentBook(SPEC)
    (page,) = book.add(alert("gpu_temperature_high", 100, host="h", gpu="0"), 100)
    assert book.add(alert("gpu_temperature_high", 101, host="h", gpu="5"), 101) == []
    (other,) = book.add(alert("gpu_temperature_high", 101, host="h2", gpu="0"), 101)
    assert other["fingerprint"] != page["fingerprint"] and len(book.open) == 2


def test_a_final_alert_needs_no_resolve() -> None:
    book = IncidentBook(SPEC)
    lost = alert("run_lost", 100, run="r")
    lost["ends_at"] = 100
    (page,) = book.add(lost, 100)
    assert page["state"] == "firing"
    book.add(alert("run_stalled", 100.5, run="r"), 100.5)  # unrelated rules: a second incident
    assert len(book.open) == 2


def test_a_member_repeat_repeats_the_incident_after_the_repeat_interval() -> None:
    book = IncidentBook(SPEC)
    (page,) = book.add(alert("node_silent", 100, host="h"), 100)
    assert book.add(alert("node_silent", 200, starts_at=100, host="h"), 200) == []
    (repeat,) = book.add(alert("node_silent", 3701, starts_at=100, host="h"), 3701)
    assert repeat["fingerprint"] == page["fingerprint"] and repeat["state"] == "firing"


def test_a_resolve_of_an_alert_never_seen_is_ignored() -> None:
    book = IncidentBook(SPEC)
    assert book.add(alert("node_silent", 100, "resolved", 90, host="h"), 100) == []
    assert not book.open


def test_a_symptom_resolved_within_group_wait_never_pages() -> None:
    book = IncidentBook(SPEC)
    book.add(alert("rank_heartbeat_lost", 100, run="r", rank="1", host="h"), 100)
    assert book.add(alert("rank_heartbeat_lost", 101, "resolved", 100, run="r", rank="1", host="h"), 101) == []
    assert book.tick(110) == [] and not book.open


def test_the_book_survives_a_snapshot_and_goes_on() -> None:
    book = IncidentBook(SPEC)
    for rank in range(2):
        book.add(alert("rank_heartbeat_lost", 100 + rank, run="r", rank=str(rank), host="h"), 100 + rank)
    _, state = loads(dumps("g", 0, (1, 1), book.state()), "g", 0)
    restored = IncidentBook(SPEC)
    restored.restore(state)
    (page,) = restored.add(alert("node_silent", 101.5, host="h"), 101.5)
    assert page["members_total"] == 3 and restored.tick(103) == []


def test_members_are_bounded() -> None:
    book = IncidentBook(SPEC)
    for gpu in range(250):
        book.add(alert("gpu_temperature_high", 100, host="h", gpu=str(gpu)), 100)
    (update,) = book.tick(200)
    assert len(book) == 200 and update["members_total"] == 250 and len(update["members"]) == 50


def config(tmp_path: Path, incidents: str) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text("rules:\n  - {name: node_silent, kind: heartbeat_lost, selector: {scope: node}}\n"
                    "  - {name: rank_heartbeat_lost, kind: heartbeat_lost, selector: {scope: rank}}\n" + incidents)
    return path


def test_the_incidents_section_is_read_and_its_mistakes_named(tmp_path: Path) -> None:
    spec = load_pipeline(config(tmp_path, "incidents:\n  group_wait: 3s\n  causes:\n"
                                          "    - {rule: node_silent, explains: [rank_heartbeat_lost, run_lost]}\n")).incidents
    assert spec is not None and spec.group_wait_s == 3.0 and spec.group_interval_s == 30.0
    assert spec.causes == (Cause("node_silent", frozenset({"rank_heartbeat_lost", "run_lost"}), ("gpu", "host", "run")),)
    assert load_pipeline(config(tmp_path, "")).incidents is None
    for bad, where in (("    - {rule: node_silent, explains: [rank_lost]}\n", "incidents.causes[0].explains[0]"),
                       ("    - {rule: node, explains: []}\n", "incidents.causes[0].rule"),
                       ("    - {rule: node_silent, explains: [], by: [rack]}\n", "incidents.causes[0].by[0]"),
                       ("    - {rule: node_silent}\n", "incidents.causes[0]")):
        with pytest.raises(PipelineConfigError, match=r"pipeline\.yml:\d+: " + where.replace("[", r"\[").replace(".", r"\.")):
            load_pipeline(config(tmp_path, "incidents:\n  causes:\n" + bad))
