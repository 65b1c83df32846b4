"""A small, realistic history written straight into the real tables, for the dashboard's tests and bench.

Two projects, four runs (one running with a straggling rank, one finished, one failed, one in another
project), four nodes x four GPUs sampled for the last 30 minutes (gpu-node-02's GPU 3 runs hot,
gpu-node-04 went silent 10 minutes ago), firing and resolved alerts with their deliveries.
Times are relative to `now`, so "live" views (last 15 minutes, silent nodes) have something to show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

PROJECT = "vision"
OTHER_PROJECT = "nlp"
LIVE_RUN = "resnet50-lr3"  # running, 4 ranks on gpu-node-01/02, rank 3 behind and dropping events
DROPPED = 1234  # events LIVE_RUN's rank 3 dropped (its heartbeats' count)
DONE_RUN = "resnet50-lr1"  # finished
FAILED_RUN = "resnet50-lr2"  # failed
OTHER_RUN = "bert-base"  # project nlp
HOSTS = ["gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04"]
GPUS = 4
HOT = ("gpu-node-02", 3)
SILENT_HOST = "gpu-node-04"
FIRING_RULE = "gpu_temperature_high"
FIRING_HOST_RULE = "node_silent"
FIRING_RUN_RULE = "straggler"
RESOLVED_RULE = "gpu_memory_high"
INCIDENT = "inc-seeded"  # fp-hot and fp-straggler: the straggler is on the hot GPU's host
METRICS = ["loss", "val_loss", "accuracy", "val_accuracy", "lr", "precision", "recall", "f1"]


@dataclass
class Seeded:
    now: datetime
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def _config(lr: float, batch: int) -> dict[str, Any]:
    return {"lr": lr, "batch_size": batch, "epochs": 90, "arch": "resnet50",
            "optimizer": {"name": "adamw", "weight_decay": 0.05, "betas": [0.9, 0.999]}, "seed": 17}


def _curve(step: int, speed: float, floor: float) -> float:
    return floor + (2.3 - floor) * math.exp(-step / speed)


def seed(client: Any, now: datetime | None = None) -> Seeded:
    """Insert the history with `client` (a writer); returns what was written, for assertions."""
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    out = Seeded(now=now)
    runs = [
        # run, project, status, user, tags, lr, batch, hosts, ranks, started (min ago), ended (min ago), steps
        (LIVE_RUN, PROJECT, "running", "alice", ["baseline", "resnet"], 0.001, 256, HOSTS[:2], 4, 120, None, 1000),
        (DONE_RUN, PROJECT, "finished", "alice", ["sweep", "resnet"], 0.01, 256, HOSTS[:2], 2, 600, 300, 1000),
        (FAILED_RUN, PROJECT, "failed", "bob", ["sweep"], 0.003, 512, HOSTS[2:3], 2, 400, 380, 300),
        (OTHER_RUN, OTHER_PROJECT, "running", "carol", ["nlp"], 0.0001, 32, HOSTS[2:3], 2, 90, None, 600),
    ]
    points, run_rows, rank_rows, events = [], [], [], []
    for index, row in enumerate(runs):
        run, project, status, user, tags, lr, batch, hosts, ranks, started_min, ended_min, steps = row
        started = now - timedelta(minutes=started_min)
        ended = now - timedelta(minutes=ended_min) if ended_min is not None else None
        last = ended or now - timedelta(seconds=5)
        span = (last - started).total_seconds()
        speed = 250 + 80 * index
        floor = 0.2 + 0.1 * index
        for rank in range(ranks):
            host = hosts[rank * len(hosts) // ranks]
            rank_steps = steps - (150 if (run == LIVE_RUN and rank == ranks - 1) else 0)
            for step in range(0, rank_steps + 1, 10):
                t = started + timedelta(seconds=span * step / steps)
                epoch = step / 100
                noise = 0.03 * math.sin(step * 0.7 + rank)
                loss = _curve(step, speed, floor) + noise
                accuracy = 1 - loss / 2.5
                values = {"loss": loss, "accuracy": accuracy, "lr": lr * (0.5 ** (step // 400))}
                if step % 100 == 0:
                    val = _curve(step, speed * 1.2, floor + 0.05)
                    values.update(val_loss=val, val_accuracy=1 - val / 2.5, precision=0.9 - val / 4,
                                  recall=0.85 - val / 4, f1=0.87 - val / 4)
                for name, value in values.items():
                    points.append([project, run, rank, host, name, step, epoch, value, t])
            dropped = DROPPED if (run == LIVE_RUN and rank == ranks - 1) else 0
            rank_rows.append([project, run, rank, rank % max(1, ranks // len(hosts)), host,
                              status, started, last, rank_steps, dropped, now])
        config_name = "BERT-base" if project == OTHER_PROJECT else "ResNet-50"
        out.runs[run] = {"project": project, "status": status, "user": user, "tags": tags, "lr": lr,
                         "batch_size": batch, "hosts": hosts, "world_size": ranks, "steps": steps}
        run_rows.append([
            project, run, f"{config_name} lr={lr:g} bs={batch}", user, status, tags, ranks, hosts, started, ended,
            last, steps, DROPPED if run == LIVE_RUN else 0,
            json.dumps(_config(lr, batch)),
            json.dumps([{"name": "imagenet-1k", "version": "2012-v2", "split": "train"},
                        {"name": "imagenet-1k", "version": "2012-v2", "split": "val"}]),
            json.dumps({"class": "ResNet50", "parameters": 25_557_032, "trainable": 25_557_032, "layers": 50}),
            json.dumps({"commit": f"3f9c2a{index}e", "branch": "main", "dirty": index == 2,
                        "command": "torchrun --nproc-per-node 2 train.py"}),
            json.dumps({"python": "3.11.9", "torch": "2.5.1", "cuda": "12.4", "driver": "550.54.15",
                        "gpu": "NVIDIA H100 80GB HBM3", "packages": {"numpy": "2.1.3", "torch": "2.5.1"}}),
            now,
        ])
        events.append([project, run, 0, hosts[0], "run_start", started,
                       json.dumps({"config": _config(lr, batch)}), now])
    client.insert("metric_points", points,
                  column_names=["project", "run", "rank", "host", "name", "step", "epoch", "value", "time"])
    client.insert("runs", run_rows, column_names=[
        "project", "run", "name", "user", "status", "tags", "world_size", "hosts", "started_at", "ended_at",
        "last_seen", "last_step", "events_dropped", "config", "datasets", "model", "code", "environment",
        "updated_at"])
    client.insert("run_ranks", rank_rows, column_names=[
        "project", "run", "rank", "local_rank", "host", "status", "started_at", "last_seen", "last_step",
        "events_dropped", "updated_at"])
    client.insert("run_events", events,
                  column_names=["project", "run", "rank", "host", "kind", "time", "payload", "ingest_time"])
    _system(client, now)
    _windows(client, now)
    _alerts(client, now, out)
    return out


def _system(client: Any, now: datetime) -> None:
    rows, inventory = [], []
    total = 80 * 2**30
    for h, host in enumerate(HOSTS):
        stop = now - timedelta(minutes=10) if host == SILENT_HOST else now - timedelta(seconds=2)
        for i in range(0, 30 * 60, 10):
            t = now - timedelta(seconds=30 * 60 - i)
            if t > stop:
                break
            wave = math.sin(i / 120 + h)
            rows += [[host, -1, "", "cpu_percent", 40 + 10 * wave, t],
                     [host, -1, "", "mem_used_percent", 55 + 5 * wave, t],
                     [host, -1, "", "load1", 12 + 2 * wave, t]]
            for gpu in range(GPUS):
                uuid = f"GPU-{h:02d}{gpu:02d}"
                hot = (host, gpu) == HOT
                util = 92 + 5 * wave if host != HOSTS[2] else 35 + 10 * wave
                rows += [[host, gpu, uuid, "util_percent", util, t],
                         [host, gpu, uuid, "mem_util_percent", util * 0.6, t],
                         [host, gpu, uuid, "mem_used_bytes", total * (0.70 + 0.02 * gpu + 0.03 * wave), t],
                         [host, gpu, uuid, "mem_total_bytes", float(total), t],
                         [host, gpu, uuid, "temperature_c", (88 if hot else 62 + 2 * gpu) + 2 * wave, t],
                         [host, gpu, uuid, "power_w", 550 + 80 * wave, t],
                         [host, gpu, uuid, "power_limit_w", 700.0, t]]
        for gpu in range(GPUS):
            inventory.append([host, gpu, f"GPU-{h:02d}{gpu:02d}", "NVIDIA H100 80GB HBM3", "", stop])
    client.insert("system_samples", rows, column_names=["host", "gpu", "gpu_uuid", "name", "value", "time"])
    client.insert("gpus", inventory, column_names=["host", "gpu", "gpu_uuid", "gpu_name", "last_error", "last_seen"])


def _windows(client: Any, now: datetime) -> None:
    """The processors' cross-rank windows of the live run: rank 3 steps slower than the others."""
    rows = []
    for i in range(10):
        start = now - timedelta(minutes=10 - i)
        for rank in range(4):
            slow = rank == 3
            rows.append(["rank", "1m", PROJECT, LIVE_RUN, rank, HOSTS[rank // 2], -1, "step_time_s", start,
                         start + timedelta(minutes=1), 60, 1.9 if slow else 1.0, 0.9, 2.0, 1.9 if slow else 1.0,
                         0.05, 1.9 if slow else 1.0, now])
        rows.append(["ranks", "1m", PROJECT, LIVE_RUN, -1, "", -1, "step_time_s", start,
                     start + timedelta(minutes=1), 240, 1.2, 1.0, 1.9, 1.9, 0.4, 1.0, now])
    client.insert("window_aggregates", rows, column_names=[
        "scope", "window", "project", "run", "rank", "host", "gpu", "name", "window_start", "window_end",
        "count", "mean", "min", "max", "last", "stddev", "median", "updated_at"])


def _alerts(client: Any, now: datetime, out: Seeded) -> None:
    link = "http://127.0.0.1:8501"
    hot_host, hot_gpu = HOT
    alerts = [
        # fingerprint, rule, severity, project, run, labels, annotations, values, starts (min ago), resolved (min ago)
        ("fp-hot", FIRING_RULE, "critical", "", "",
         {"host": hot_host, "gpu": str(hot_gpu), "alertname": FIRING_RULE, "severity": "critical"},
         {"summary": f"GPU {hot_gpu} on {hot_host} at 88 °C", "dashboard_url": f"{link}/host?host={hot_host}"},
         {"value": 88.0, "threshold": 85.0}, 12, None),
        ("fp-silent", FIRING_HOST_RULE, "critical", "", "",
         {"host": SILENT_HOST, "alertname": FIRING_HOST_RULE, "severity": "critical"},
         {"summary": f"{SILENT_HOST} sent nothing for 60 s", "dashboard_url": f"{link}/host?host={SILENT_HOST}"},
         {"silent_s": 600.0}, 9, None),
        ("fp-straggler", FIRING_RUN_RULE, "warning", PROJECT, LIVE_RUN,
         {"project": PROJECT, "run": LIVE_RUN, "rank": "3", "host": HOSTS[1], "alertname": FIRING_RUN_RULE,
          "severity": "warning"},
         {"summary": f"rank 3 of {LIVE_RUN} on {HOSTS[1]} is 1.9x slower than the median",
          "dashboard_url": f"{link}/run?project={PROJECT}&run={LIVE_RUN}"},
         {"value": 1.9, "median": 1.0, "ratio": 1.9}, 30, None),
        ("fp-mem", RESOLVED_RULE, "warning", "", "",
         {"host": HOSTS[0], "gpu": "0", "alertname": RESOLVED_RULE, "severity": "warning"},
         {"summary": f"GPU 0 on {HOSTS[0]} memory at 96%", "dashboard_url": f"{link}/host?host={HOSTS[0]}"},
         {"value": 0.96}, 90, 70),
    ]
    rows, deliveries = [], []
    for fp, rule, severity, project, run, labels, annotations, values, starts_min, resolved_min in alerts:
        starts = now - timedelta(minutes=starts_min)
        out.fingerprints[rule] = fp
        rows.append([fp, rule, "firing", severity, project, run, labels, annotations, values, starts, None, starts])
        deliveries.append([fp, rule, "firing", "alertmanager", "alertmanager", 1, "delivered", 200, "", 12.5,
                           starts, starts + timedelta(milliseconds=13)])
        if resolved_min is not None:
            ends = now - timedelta(minutes=resolved_min)
            rows.append([fp, rule, "resolved", severity, project, run, labels, annotations, values, starts, ends, ends])
            deliveries.append([fp, rule, "resolved", "alertmanager", "alertmanager", 1, "delivered", 200, "", 9.0,
                               ends, ends + timedelta(milliseconds=9)])
    # one route that failed twice, then gave up
    starts = now - timedelta(minutes=12)
    for attempt, outcome in ((1, "retrying"), (2, "retrying"), (3, "failed")):
        deliveries.append(["fp-hot", FIRING_RULE, "firing", "slack-oncall", "slack", attempt, outcome, 503,
                           "HTTP 503 Service Unavailable", 150.0, starts, starts + timedelta(seconds=attempt)])
    # the straggler runs on the hot GPU's host: one incident, the temperature its likely cause
    client.insert("incidents", [[
        INCIDENT, "firing", FIRING_RULE, "critical", f"GPU {hot_gpu} on {hot_host} at 88 °C (explains 1 {FIRING_RUN_RULE})",
        f"{FIRING_RULE}: GPU {hot_gpu} on {hot_host} at 88 °C", "", "", [hot_host], [LIVE_RUN], ["fp-straggler", "fp-hot"],
        [FIRING_RUN_RULE, FIRING_RULE], 2, now - timedelta(minutes=30), None, now - timedelta(minutes=12)]],
        column_names=["incident", "state", "rule", "severity", "summary", "cause", "project", "run", "hosts", "runs",
                      "members", "member_rules", "members_total", "starts_at", "ends_at", "time"])
    client.insert("alerts", rows, column_names=[
        "fingerprint", "rule", "state", "severity", "project", "run", "labels", "annotations", "values",
        "starts_at", "ends_at", "time"])
    client.insert("alert_deliveries", deliveries, column_names=[
        "fingerprint", "rule", "state", "route", "kind", "attempt", "outcome", "http_status", "error",
        "latency_ms", "notified_at", "time"])
