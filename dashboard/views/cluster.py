"""Cluster: every node x GPU as a live heatmap, last seen per node, stragglers and silent nodes marked."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from trainmon.dashboard import components as c

FIGURES = {  # label: (column of Queries.cluster, colour scheme, fixed domain or None, unit)
    "Utilisation": ("util_percent", "viridis", [0, 100], "%"),
    "Memory": ("mem_used_percent", "purples", [0, 100], "%"),
    "Temperature": ("temperature_c", "inferno", [30, 95], "°C"),
    "Power": ("power_w", "oranges", None, "W"),
}
LIGHT_HIGH = {"viridis", "inferno"}  # schemes whose high end is light: dark text there
HOSTS_PER_BLOCK = 64  # nodes per heatmap panel; big clusters get several panels side by side

st.title("Cluster")


def controls() -> tuple[str, int, int]:
    row = st.columns([2, 1, 1])
    figure = row[0].segmented_control("Colour by", list(FIGURES), default="Utilisation", key="figure",
                                      required=True)
    minutes = row[1].selectbox("Window", [5, 15, 60], index=1, key="minutes", format_func=lambda m: f"last {m} min",
                               help="Each cell is the GPU's latest figures within this window.")
    silent_s = row[2].selectbox("Silent after", [30, 60, 120, 300], index=1, key="silent_s",
                                format_func=lambda s: f"{s} s without samples")
    return figure, minutes, silent_s


def _names(frame: pd.DataFrame | None, column: str = "host") -> set[str]:
    if frame is None or frame.empty or column not in frame:
        return set()
    return {str(h) for h in frame[column] if h}


def view(figure: str, minutes: int, silent_s: int) -> None:
    cluster = c.fetch("cluster", minutes=minutes)
    silent = _names(c.fetch("silent_nodes", seconds=silent_s))
    stragglers = c.fetch("stragglers", minutes=minutes)
    straggling = _names(stragglers)
    if cluster.empty and not silent:
        c.empty(f"No GPU samples in the last {minutes} minutes. Start `trainmon agent` on the nodes "
                "(or `trainmon simulate`).")
        return
    nodes = node_table(cluster, silent, straggling)
    cols = st.columns(5)
    cols[0].metric("Nodes", len(nodes))
    cols[1].metric("GPUs", int((cluster["gpu"] >= 0).sum()) if not cluster.empty else 0)
    cols[2].metric("Mean GPU utilisation", f"{cluster['util_percent'].mean():.0f} %" if not cluster.empty else "–")
    cols[3].metric("Silent nodes", len(silent), delta=None)
    cols[4].metric("Straggler nodes", len(straggling))
    if silent:
        st.error(f"Silent for more than {silent_s} s: {_some(silent)}", icon=":material/wifi_off:")
    if straggling:
        st.warning(f"Stragglers on: {_some(straggling)}", icon=":material/slow_motion_video:")
    column, scheme, domain, unit = FIGURES[figure]
    if not cluster.empty:
        c.show_chart(heatmap(cluster, column, scheme, domain, unit, figure, silent, straggling), key="heatmap",
                     height=None, width="content")
        st.caption("Grey cells: silent nodes (last figures shown faded). Red outline: a node with a straggling rank.")
    st.subheader("Nodes")
    st.dataframe(c.colored(nodes, ["state"]), hide_index=True, width="stretch",
                 height=min(38 + 35 * len(nodes), 560),
                 column_config={
                     "host": st.column_config.LinkColumn("host", display_text=r"host=([^&]*)$"),
                     "mean util %": st.column_config.ProgressColumn("mean util %", min_value=0, max_value=100,
                                                                    format="%.0f"),
                     "max temp °C": st.column_config.NumberColumn("max temp °C", format="%.0f"),
                     "max memory %": st.column_config.NumberColumn("max memory %", format="%.0f"),
                     "power W": st.column_config.NumberColumn("power W", format="%.0f"),
                 })
    if stragglers is not None and not stragglers.empty:
        st.subheader("Stragglers")
        shown = stragglers.assign(
            run=[c.run_link(p, r) for p, r in zip(stragglers["project"], stragglers["run"])],
            rank=["all" if r < 0 else str(int(r)) for r in stragglers["rank"]],
            host=[h or "–" for h in stragglers["host"]])
        shown = shown[[k for k in ("run", "project", "rank", "host", "metric", "value", "median", "ratio", "since",
                                   "firing", "source") if k in shown]]
        st.dataframe(shown, hide_index=True, width="stretch",
                     column_config={
                         "run": st.column_config.LinkColumn("run", display_text=r"run=([^&]*)$"),
                         "value": st.column_config.NumberColumn("value", format="%.3g"),
                         "median": st.column_config.NumberColumn("median", format="%.3g"),
                         "ratio": st.column_config.NumberColumn("× median", format="%.2f"),
                         "since": st.column_config.DatetimeColumn("since", format="YYYY-MM-DD HH:mm:ss"),
                         "firing": st.column_config.CheckboxColumn("firing"),
                         "source": st.column_config.TextColumn("source", help="alert: a straggler alert; window: "
                                                               "the processors' cross-rank window")})


def _some(hosts: set[str], shown: int = 12) -> str:
    names = sorted(hosts)
    more = f" and {len(names) - shown} more (see the node table)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def node_table(cluster: pd.DataFrame, silent: set[str], straggling: set[str]) -> pd.DataFrame:
    if cluster.empty:
        per = pd.DataFrame(columns=["host", "GPUs", "util", "temp", "mem", "power", "seen"])
    else:
        per = cluster.assign(host=cluster["host"].astype(str)).groupby("host", as_index=False).agg(
            GPUs=("gpu", "size"), util=("util_percent", "mean"), temp=("temperature_c", "max"),
            mem=("mem_used_percent", "max"), power=("power_w", "sum"), seen=("last_seen", "max"))
    missing = sorted(silent - set(per["host"]))
    if missing:  # silent longer than the window: no figures left, still listed
        per = pd.concat([per, pd.DataFrame({"host": missing, "GPUs": 0})], ignore_index=True)
    state = _states(per["host"], silent, straggling)
    frame = pd.DataFrame({
        "host": [c.host_link(h) for h in per["host"]], "state": state, "GPUs": per["GPUs"].astype(int),
        "mean util %": per["util"], "max temp °C": per["temp"], "max memory %": per["mem"], "power W": per["power"],
        "last seen": [c.ago(t) if pd.notna(t) else "–" for t in per["seen"]],
        "_order": state.map({"silent": 0, "straggler": 1, "ok": 2}), "_host": per["host"],
    })
    return frame.sort_values(["_order", "_host"]).drop(columns=["_order", "_host"])


def _states(hosts: pd.Series, silent: set[str], straggling: set[str]) -> pd.Series:
    state = pd.Series("ok", index=hosts.index)
    state[hosts.isin(straggling)] = "straggler"
    state[hosts.isin(silent)] = "silent"
    return state


def heatmap(cluster: pd.DataFrame, column: str, scheme: str, domain, unit: str, label: str,
            silent: set[str], straggling: set[str]) -> alt.Chart:
    """Node x GPU cells. A big cluster is split into panels of HOSTS_PER_BLOCK nodes, four in a row: one
    faceted chart whose rows are positions within a panel, the node names drawn beside them (Streamlit's
    Vega cannot draw facets with independent y scales)."""
    data = cluster[cluster["gpu"] >= 0].copy()
    data["host"] = data["host"].astype(str)
    hosts = sorted(data["host"].unique())
    position = {h: i for i, h in enumerate(hosts)}
    data["value"] = pd.to_numeric(data[column], errors="coerce")
    data["state"] = _states(data["host"], silent, straggling)
    seen = data["last_seen"].drop_duplicates()  # a few distinct times: format each once
    data["last seen"] = data["last_seen"].map(dict(zip(seen, map(c.ago, seen))))
    rows = min(len(hosts), HOSTS_PER_BLOCK)
    gpus = int(data["gpu"].max()) + 1 if not data.empty else 1
    cell = 28 if gpus <= 16 and rows <= 32 else 14
    if domain is None:
        finite = data["value"].dropna()
        domain = [float(finite.min()), float(finite.max())] if not finite.empty else [0.0, 1.0]
    faceted = len(hosts) > HOSTS_PER_BLOCK
    if faceted:
        index = data["host"].map(position)
        first = [hosts[i] for i in range(0, len(hosts), HOSTS_PER_BLOCK)]
        last = [hosts[min(i + HOSTS_PER_BLOCK, len(hosts)) - 1] for i in range(0, len(hosts), HOSTS_PER_BLOCK)]
        names = [f"{a} … {b}" for a, b in zip(first, last)]
        data["panel"] = [names[i // HOSTS_PER_BLOCK] for i in index]
        data["row"] = index % HOSTS_PER_BLOCK
        y = alt.Y("row:O", axis=None)
    else:
        y = alt.Y("host:N", title=None, sort=hosts, axis=alt.Axis(labelLimit=200))
    base = alt.Chart().encode(x=alt.X("gpu:O", title="GPU", axis=alt.Axis(labelAngle=0, orient="top")), y=y)
    tooltip = ["host:N", "gpu:O", alt.Tooltip("util_percent:Q", title="util %", format=".0f"),
               alt.Tooltip("mem_used_percent:Q", title="memory %", format=".0f"),
               alt.Tooltip("temperature_c:Q", title="temp °C", format=".0f"),
               alt.Tooltip("power_w:Q", title="power W", format=".0f"), "state:N", "last seen:N"]
    legend = alt.Legend(orient="top", direction="horizontal") if faceted else alt.Legend()
    colour = alt.Color("value:Q", title=f"{label} ({unit})", scale=alt.Scale(scheme=scheme, domain=domain),
                       legend=legend)
    cells = base.mark_rect(stroke="white", strokeWidth=1 if cell >= 26 else 0.5).encode(
        color=alt.condition("datum.state == 'silent'", alt.value("#c8c8c8"), colour),
        opacity=alt.condition("datum.state == 'silent'", alt.value(0.6), alt.value(1.0)),
        tooltip=tooltip,
    )
    outline = base.transform_filter("datum.state == 'straggler'").mark_rect(
        fill=None, stroke="#d62728", strokeWidth=2.5 if cell >= 26 else 1.5)
    layers = [cells, outline]
    if cell >= 26:
        lo, hi = domain
        middle = lo + 0.55 * (hi - lo)
        dark = f"datum.value {'>' if scheme in LIGHT_HIGH else '<'} {middle}"
        layers.append(base.mark_text(fontSize=11).encode(
            text=alt.Text("value:Q", format=".0f"),
            color=alt.condition(f"datum.state == 'silent' || {dark}", alt.value("#222"), alt.value("white"))))
    if faceted:  # node names left of each panel's rows
        layers.append(base.transform_filter(f"datum.gpu == {int(data['gpu'].min())}").mark_text(
            align="right", baseline="middle", dx=-4, fontSize=10, color="#555").encode(x=alt.value(0), text="host:N"))
    chart = alt.layer(*layers, data=data).properties(width=alt.Step(cell + 16 if cell >= 26 else cell),
                                                     height=alt.Step(cell))
    if faceted:
        chart = chart.facet(facet=alt.Facet("panel:N", sort=names, title=None,
                                            header=alt.Header(labelFontSize=11, labelColor="#555")),
                            columns=4, spacing=90)
    return chart


c.guarded(lambda: c.live(view, *controls()))
