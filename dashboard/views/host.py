"""Host: one node's GPU and host figures over a chosen range, its alerts. Alerts link here: /host?host=H."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from trainmon.dashboard import components as c

HOST_POINTS = 300  # per line: a 600-pixel-wide panel shows no more

GPU_FIGURES = [  # (figure, title, unit, scale)
    ("util_percent", "GPU utilisation", "%", 1.0),
    ("mem_used_bytes", "GPU memory used", "GiB", 2.0**-30),
    ("temperature_c", "GPU temperature", "°C", 1.0),
    ("power_w", "GPU power", "W", 1.0),
]
HOST_FIGURES = [
    ("cpu_percent", "CPU", "%", 1.0),
    ("mem_used_percent", "Host memory", "%", 1.0),
    ("load1", "Load (1 min)", "tasks", 1.0),
]


def known_hosts(wanted: str | None) -> list[str]:
    hosts = set(c.fetch("hosts", minutes=24 * 60))
    silent = c.fetch("silent_nodes", seconds=60)
    if silent is not None and not silent.empty:
        hosts |= set(silent["host"].astype(str))
    if wanted:
        hosts.add(wanted)
    return sorted(hosts)


def body() -> None:
    wanted = c.param("host")
    hosts = known_hosts(wanted)
    if not hosts:
        st.title("Host")
        c.empty("No node has sent samples yet. Start `trainmon agent` on the nodes (or `trainmon simulate`).")
        return
    row = st.columns([2, 3])
    host = row[0].selectbox("Host", hosts, key="host", bind="query-params")
    with row[1]:
        start, end = c.time_range("Range", key="range", default="1h")
    st.title(f"Host {host}")
    c.prefetch([("cluster", (), {"minutes": 15}), ("silent_nodes", (), {"seconds": 60}),
                ("alerts", (), {"host": host, "firing_only": True}),
                ("host_series", ([host], [f for f, *_ in GPU_FIGURES], start, end), {"points": HOST_POINTS})])
    c.live(summary, host)
    tabs = st.tabs(["GPUs", "Host", "Alerts"], key="host_tab", on_change="rerun", bind="query-params")
    for tab, what in zip(tabs, ("gpus", "host", "alerts")):
        if tab.open:
            with tab:
                c.live(figures, host, start, end, what)


def summary(host: str) -> None:
    latest = c.fetch("cluster", minutes=15)
    mine = latest[latest["host"].astype(str) == host] if not latest.empty else latest
    silent = c.fetch("silent_nodes", seconds=60)
    is_silent = silent is not None and not silent.empty and host in set(silent["host"].astype(str))
    cols = st.columns(5)
    cols[0].metric("State", "silent" if is_silent else ("live" if not mine.empty else "no samples"))
    cols[1].metric("GPUs", len(mine))
    cols[2].metric("Mean GPU util", f"{mine['util_percent'].mean():.0f} %" if not mine.empty else "–")
    cols[3].metric("Max GPU temp", f"{mine['temperature_c'].max():.0f} °C" if not mine.empty else "–")
    cols[4].metric("Last seen", c.ago(mine["last_seen"].max()) if not mine.empty else "–")
    if is_silent:
        st.error(f"{host} has sent no samples for more than 60 s.", icon=":material/wifi_off:")
    firing = c.fetch("alerts", host=host, firing_only=True)
    if not firing.empty:
        st.markdown(f"**Firing on this host** ({len(firing)})")
        c.alerts_lines(firing)


def figures(host: str, start, end, what: str) -> None:
    if st.session_state.get("refresh_s"):  # a live page follows the clock
        span = end - start
        end = c.now_floor()
        start = end - span
    if what == "alerts":
        alerts = c.fetch("alerts", host=host)
        if alerts.empty:
            st.success("No alerts for this host.", icon=":material/check_circle:")
        else:
            c.alerts_table(alerts, key="host_alerts")
        return
    figures = GPU_FIGURES if what == "gpus" else HOST_FIGURES
    frame = c.fetch("host_series", [host], [f for f, *_ in figures], start, end, points=HOST_POINTS)
    if frame is None or frame.empty:
        c.empty(f"No samples from {host} between {start:%Y-%m-%d %H:%M} and {end:%H:%M} UTC.")
        return
    if what == "gpus":
        gpus = frame[frame["gpu"] >= 0].assign(device=lambda f: "GPU " + f["gpu"].astype(int).astype(str))
        panels(gpus, GPU_FIGURES, "device", "GPU")
    else:
        panels(frame[frame["gpu"] < 0], HOST_FIGURES, "name", "figure")
    st.caption(f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC, at most {HOST_POINTS} points per line "
               "(min..max band per bucket).")


def panels(frame: pd.DataFrame, figures: list[tuple[str, str, str, float]], color: str, color_title: str) -> None:
    columns = st.columns(2)
    shown = 0
    for figure, title, unit, scale in figures:
        data = frame[frame["name"] == figure]
        if data.empty:
            continue
        if scale != 1.0:
            data = data.assign(**{k: data[k] * scale for k in ("min", "max", "mean", "last") if k in data})
        with columns[shown % 2]:
            c.show_chart(c.series_chart(data, x="time", color=color, title=title, y_title=unit,
                                        color_title=color_title), height=260)
        shown += 1
    if not shown:
        st.caption("No samples of these figures.")


c.guarded(body)
