"""Run: one run's curves, its hardware over the same time, its ranks, its record and its alerts.

Opened from alerts as /run?project=P&run=R (project may be missing: the run is then looked up).
"""

from __future__ import annotations

import json
import math

import altair as alt
import pandas as pd
import streamlit as st

from trainmon.dashboard import components as c
from trainmon.dashboard.queries import HOST_POINTS, METRIC_POINTS, epochs_at


HARDWARE = [  # (figure, panel title, unit)
    ("util_percent", "GPU utilisation", "%"),
    ("mem_used_bytes", "GPU memory used", "GiB"),
    ("temperature_c", "GPU temperature", "°C"),
    ("power_w", "GPU power", "W"),
]
TABS = ["Metrics", "Hardware", "Ranks", "Config", "Alerts"]


def pick_run() -> tuple[str, str] | None:
    """Project and run from the URL (kept in sync with the two selectors)."""
    wanted_project, wanted_run = c.param("project"), c.param("run")
    if wanted_run and not wanted_project and "project" not in st.session_state:
        found = c.fetch("runs", search=wanted_run, limit=50)
        exact = found[found["run"] == wanted_run] if not found.empty else found
        if not exact.empty:
            st.session_state["project"] = wanted_project = str(exact.iloc[0]["project"])
    projects = list(c.fetch("projects"))
    if wanted_project and wanted_project not in projects:
        projects.append(wanted_project)
    if not projects:
        c.empty("No runs yet: start one with `trainmon.init(...)` or `trainmon simulate`.")
        return None
    left, right = st.columns([1, 3])
    project = left.selectbox("Project", projects, key="project", bind="query-params")
    runs = c.fetch("runs", project=project, limit=1000)
    names = list(runs["run"]) if not runs.empty else []
    status = dict(zip(runs["run"], runs["status"])) if not runs.empty else {}
    if wanted_run and wanted_run not in names and project == wanted_project:
        names.insert(0, wanted_run)
    if not names:
        c.empty(f"Project {project} has no runs.")
        return None
    run = right.selectbox("Run", names, key="run", bind="query-params",
                          format_func=lambda r: f"{r}  ·  {status[r]}" if r in status else r)
    return project, run


def header(project: str, run: str) -> None:
    info = c.fetch("run", project, run) or {}
    status = info.get("status", "?")
    st.title(info.get("name") or run)
    started, ended = c.utc(info.get("started_at")), c.utc(info.get("ended_at"))
    seconds = ((ended or c.now()) - started).total_seconds() if started else None
    line = st.container(horizontal=True, vertical_alignment="center", gap="small")
    line.badge(status, color=c.STATUS_COLOR.get(status, "gray"), icon=":material/circle:")
    firing = c.fetch("alerts", project=project, run=run, firing_only=True)
    if not firing.empty:
        line.badge(f"{len(firing)} alert(s) firing", color="red", icon=":material/notifications_active:")
    dropped = int(info.get("events_dropped") or 0)
    if dropped:
        line.badge(f"{dropped:,} events dropped by the SDK", color="orange", icon=":material/warning:",
                   help="lost for good on the training side (queue cap, spool full, refused by Kafka): the curves "
                        "have holes; the Ranks tab says which ranks")
    tags = list(info.get("tags") or [])
    for tag in tags[:12]:
        line.badge(tag, color="gray", icon=":material/sell:")
    line.caption(f"run `{run}` · project **{project}** · user **{info.get('user') or '–'}** · started "
                 f"{started:%Y-%m-%d %H:%M:%S} UTC" if started else f"run `{run}` · project **{project}**")
    cols = st.columns(5)
    cols[0].metric("Duration", c.duration(seconds))
    cols[1].metric("Last step", f"{int(info.get('last_step') or 0):,}")
    cols[2].metric("Last seen", c.ago(info.get("last_seen")))
    cols[3].metric("World size", int(info.get("world_size") or 0))
    cols[4].metric("Hosts", len(info.get("hosts") or []))
    hosts = list(info.get("hosts") or [])
    if hosts:
        shown = " · ".join(f"[{h}]({c.host_link(h)})" for h in hosts[:32])
        more = f" and {len(hosts) - 32} more" if len(hosts) > 32 else ""
        st.markdown(f":material/dns: Hosts: {shown}{more}")


def alert_marks(alerts: pd.DataFrame, x: str, epochs: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Alert starts as chart rules: by time, or by the step the alert reported (values['step']),
    mapped through the run's step -> epoch map for the epoch axis."""
    if alerts is None or alerts.empty:
        return None
    rows = []
    for _, alert in alerts.iterrows():
        summary = alert.get("summary") or ""
        if x == "time":
            at = c.utc(alert.get("starts_at"))
        else:
            values = alert.get("values") if isinstance(alert.get("values"), dict) else {}
            at = values.get("step")
            if x == "epoch" and at is not None:
                at = float(epochs_at(epochs, [at])[0]) if epochs is not None else math.nan
                at = None if math.isnan(at) else at
        if at is not None:
            rows.append({"x": at, "rule": alert.get("rule"), "severity": alert.get("severity"), "summary": summary})
    return pd.DataFrame(rows) if rows else None


def metrics_tab(project: str, run: str) -> None:
    names = c.fetch("metric_names", project, run)
    if not names:
        c.empty("This run has logged no metrics yet.")
        return
    row = st.columns([1, 2, 1, 1])
    x = row[0].segmented_control("X axis", ["step", "epoch", "time"], default="step", key="x", required=True,
                                 help="Epoch: the epoch logged with each step (runs that log none show no lines).")
    smoothing = row[1].slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
                              help="Exponential moving average of each line; the band behind it shows the raw values "
                              "(each bucket's min..max).")
    rank_options = ["all ranks"] + [f"rank {r}" for r in _rank_numbers(project, run)]
    rank_label = row[2].selectbox("Ranks", rank_options, key="rank",
                                  help="All ranks: each bucket's min..max band covers every rank.")
    choices = [250, METRIC_POINTS, 1000, 2000]
    points = row[3].selectbox("Points per line", choices, index=choices.index(METRIC_POINTS), key="points")
    panels = c.group_metrics(names)
    chosen = st.multiselect("Metrics", names, default=[n for group in panels.values() for n in group][:12],
                            key="metrics")
    rank = None if rank_label == "all ranks" else int(rank_label.split()[1])
    c.live(metrics_panels, project, run, chosen, x, smoothing, rank, points)


def _rank_numbers(project: str, run: str) -> list[int]:
    ranks = c.fetch("ranks", project, run)
    return sorted(int(r) for r in ranks["rank"]) if not ranks.empty else []


def metrics_panels(project: str, run: str, chosen: list[str], x: str, smoothing: float, rank: int | None,
                   points: int) -> None:
    if not chosen:
        c.empty("Pick one or more metrics.")
        return
    epochs = c.fetch("epoch_map", project, [run], chosen[0]) if x == "epoch" else None
    marks = alert_marks(c.fetch("alerts", project=project, run=run), x, epochs)
    panels = c.group_metrics(chosen)
    columns = st.columns(2)
    wanted = [name for names in panels.values() for name in names]
    fetched = dict(zip(wanted, c.fetch_many(
        [("series", (project, [run], name), {"x": x, "points": points, "rank": rank}) for name in wanted])))
    for index, (title, names) in enumerate(panels.items()):
        frames = [fetched[name].assign(metric=name) for name in names if not fetched[name].empty]
        with columns[index % 2]:
            if not frames:
                st.caption(f"{title}: no points")
                continue
            data = pd.concat(frames, ignore_index=True)
            chart = c.series_chart(data, x=x, color="metric", title=title, rules=marks,
                                   smoothing=0.0 if title == "Learning rate" else smoothing,  # a schedule, not noise
                                   log_y=title == "Learning rate" and bool((data["mean"] > 0).all()))
            c.show_chart(chart, height=300)
    st.caption(f"Each line has at most {points} points, downsampled in ClickHouse; the band is each bucket's "
               f"min..max{' across all ranks' if rank is None else ''}. Dashed red rules: alerts.")


def hardware_tab(project: str, run: str, info: dict) -> None:
    hosts = list(info.get("hosts") or [])
    if not hosts:
        c.empty("No hosts are known for this run yet.")
        return
    c.live(hardware_panels, hosts, c.utc(info.get("started_at")), c.utc(info.get("ended_at")),
           info.get("status") == "running")


MAX_DEVICE_LINES = 16  # more GPUs than this are drawn as one line: their mean, with the min..max of all


def hardware_panels(hosts: list[str], start, end, running: bool) -> None:
    end = c.now_floor() if running or end is None else end
    start = start or end - pd.Timedelta(hours=1)
    # points per line shrink as GPUs grow (8 per host assumed): at most ~20,000 rows per figure
    points = max(60, min(HOST_POINTS, 20_000 // (8 * len(hosts))))
    frame = c.fetch("host_series", hosts, [f for f, _, _ in HARDWARE], start, end, points=points)
    frame = _gpu_frame(frame)
    if frame.empty:
        c.empty(f"No GPU samples from {', '.join(hosts[:8])}{' ...' if len(hosts) > 8 else ''} between "
                f"{start:%Y-%m-%d %H:%M} and {end:%H:%M} UTC.")
        return
    devices = frame["device"].nunique()
    pooled = devices > MAX_DEVICE_LINES
    if pooled:
        frame = (frame.groupby(["name", "x"], as_index=False)
                 .agg(min=("min", "min"), max=("max", "max"), mean=("mean", "mean"))
                 .assign(device=f"all {devices} GPUs"))
    columns = st.columns(2)
    for index, (figure, title, unit) in enumerate(HARDWARE):
        data = frame[frame["name"] == figure]
        if data.empty:
            continue
        if unit == "GiB":
            data = data.assign(**{k: data[k] / 2**30 for k in ("min", "max", "mean") if k in data})
        with columns[index % 2]:
            c.show_chart(c.series_chart(data, x="time", color="device", title=title, y_title=unit,
                                        color_title="host:gpu"), height=280)
    st.caption(f"{len(hosts)} host(s), {devices} GPU(s) from {start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC; "
               + ("the line is the mean of all GPUs, the band the lowest and highest of any. "
                  "The Host page shows one node's GPUs apart." if pooled else "the band is each bucket's min..max."))


def _gpu_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """host_series rows of GPUs only, with x (time) and a 'host:gpu' device label."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["name", "device", "x", "min", "max", "mean"])
    frame = frame[frame["gpu"] >= 0].copy()
    frame["device"] = frame["host"].astype(str) + ":" + frame["gpu"].astype(int).astype(str)
    return frame


def ranks_tab(project: str, run: str, names: list[str]) -> None:
    c.live(ranks_table, project, run)
    if not names:
        return
    st.subheader("Cross-rank spread")
    default = next((n for n in ("loss", "train_loss") if n in names), names[0])
    metric = st.selectbox("Metric", names, index=names.index(default), key="spread_metric")
    c.live(spread_chart, project, run, metric)


def ranks_table(project: str, run: str) -> None:
    ranks = c.fetch("ranks", project, run)
    if ranks.empty:
        c.empty("No ranks reported yet.")
        return
    top = int(ranks["last_step"].max())
    view = pd.DataFrame({
        "rank": ranks["rank"], "host": ranks["host"], "local rank": ranks["local_rank"],
        "status": ranks["status"],
        "last step": ranks["last_step"], "behind": top - ranks["last_step"], "dropped": ranks["events_dropped"],
        "last seen": [c.ago(t) for t in ranks["last_seen"]],
        "host page": [c.host_link(h) for h in ranks["host"]],
    }).sort_values("rank")
    behind = view["behind"]
    slow = behind > max(10, 0.05 * max(top, 1))
    styled = c.colored(view, ["status"]).apply(
        lambda col: ["background-color: #ffe0b2" if s else "" for s in slow], subset=["behind"])
    st.dataframe(
        styled,
        hide_index=True, width="stretch", height=min(38 + 35 * len(view), 420),
        column_config={"host page": st.column_config.LinkColumn("host page", display_text="open ↗")},
    )
    if slow.any():
        st.warning(f"{int(slow.sum())} rank(s) behind the leader by more than 5 % of its steps: "
                   + ", ".join(str(r) for r in view.loc[slow, "rank"]), icon=":material/slow_motion_video:")


def spread_chart(project: str, run: str, metric: str) -> None:
    spread = c.fetch("rank_spread", project, run, metric, points=500)
    if spread is None or spread.empty:
        c.empty(f"No per-rank points of {metric}.")
        return
    data = spread.copy()
    base = alt.Chart(data).encode(x=alt.X("x:Q", title="step"))
    band = base.mark_area(opacity=0.25, color="#1f77b4").encode(
        y=alt.Y("min:Q", title=metric, scale=alt.Scale(zero=False)), y2="max:Q")
    line = base.mark_line(color="#1f77b4").encode(
        y="median:Q", tooltip=[alt.Tooltip("x:Q", title="step"), alt.Tooltip("min:Q", format=".5g"),
                               alt.Tooltip("median:Q", format=".5g"), alt.Tooltip("max:Q", format=".5g")])
    c.show_chart(alt.layer(band, line).properties(title=f"{metric}: median and min..max across ranks")
                 .interactive(bind_y=False), height=300)


def config_tab(info: dict) -> None:
    config = info.get("config") or {}
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Config and hyperparameters")
        if config:
            flat = c.flatten(config)
            st.dataframe(pd.DataFrame({"key": list(flat), "value": [_text(v) for v in flat.values()]}),
                         hide_index=True, width="stretch", height=min(38 + 35 * len(flat), 600))
        else:
            st.caption("No config logged.")
        st.subheader("Datasets")
        datasets = info.get("datasets") or []
        if datasets:
            st.dataframe(pd.DataFrame([d if isinstance(d, dict) else {"dataset": d} for d in datasets])
                         .map(_text), hide_index=True, width="stretch")
        else:
            st.caption("No datasets logged.")
    with right:
        for key, title in (("model", "Model"), ("code", "Code version"), ("environment", "Environment")):
            st.subheader(title)
            value = info.get(key)
            if value:
                st.json(value, expanded=1 if key == "environment" else 2)
            else:
                st.caption(f"No {title.lower()} logged.")


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def alerts_tab(project: str, run: str) -> None:
    c.live(run_alerts, project, run)


def run_alerts(project: str, run: str) -> None:
    alerts = c.fetch("alerts", project=project, run=run)
    if alerts.empty:
        st.success("No alerts for this run.", icon=":material/check_circle:")
        return
    timeline = alerts.copy()
    timeline["start"] = timeline["starts_at"]
    timeline["end"] = [c.utc(e) or c.now() for e in timeline.get("ends_at", [None] * len(timeline))]
    chart = alt.Chart(timeline).mark_bar(height=14, cornerRadius=2).encode(
        x=alt.X("start:T", title="time (UTC)", axis=alt.Axis(format=c.time_format(timeline["start"]))),
        x2="end:T", y=alt.Y("rule:N", title=None),
        color=alt.Color("severity:N", scale=alt.Scale(domain=["critical", "warning", "info"],
                                                      range=["#d62728", "#ff7f0e", "#1f77b4"])),
        tooltip=["rule:N", "severity:N", "state:N", alt.Tooltip("start:T"), alt.Tooltip("end:T")])
    c.show_chart(chart.properties(height=alt.Step(28), title="Alerts on the timeline"), height=None)
    c.alerts_table(alerts)


def body() -> None:
    chosen = pick_run()
    if chosen is None:
        return
    project, run = chosen
    c.prefetch([("run", (project, run), {}), ("alerts", (), {"project": project, "run": run, "firing_only": True}),
                ("metric_names", (project, run), {}), ("ranks", (project, run), {}),
                ("alerts", (), {"project": project, "run": run})])
    info = c.fetch("run", project, run)
    if not info:
        st.warning(f"Run `{run}` of project `{project}` is not known (yet).", icon=":material/search_off:")
        return
    c.live(header, project, run)  # status, last step, last seen: live
    tabs = st.tabs(TABS, key="tab", on_change="rerun", bind="query-params")
    if tabs[0].open:
        with tabs[0]:
            metrics_tab(project, run)
    if tabs[1].open:
        with tabs[1]:
            hardware_tab(project, run, info)
    if tabs[2].open:
        with tabs[2]:
            ranks_tab(project, run, c.fetch("metric_names", project, run))
    if tabs[3].open:
        with tabs[3]:
            config_tab(info)
    if tabs[4].open:
        with tabs[4]:
            alerts_tab(project, run)


c.guarded(body)
