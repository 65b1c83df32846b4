"""Compare: N runs of one project overlaid, what differs in their configs, hyperparameters vs a final metric.

URL: /compare?project=P&runs=a,b,c (or runs=a&runs=b).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from trainmon.dashboard import components as c

st.title("Compare runs")


def pick() -> tuple[str, list[str]] | None:
    projects = list(c.fetch("projects"))
    wanted = c.param("project")
    if wanted and wanted not in projects:
        projects.append(wanted)
    if not projects:
        c.empty("No runs yet.")
        return None
    left, right = st.columns([1, 3])
    project = left.selectbox("Project", projects, index=projects.index(wanted) if wanted in projects else 0,
                             key="cmp_project")
    runs = c.fetch("runs", project=project, limit=1000)
    names = list(runs["run"]) if not runs.empty else []
    requested = [r for r in c.param_list("runs") if project == wanted]
    names += [r for r in requested if r not in names]
    default = [r for r in requested if r in names] or names[:min(3, len(names))]
    chosen = right.multiselect("Runs", names, default=default, key=f"cmp_runs_{project}",
                               placeholder="pick two or more runs")
    if set(chosen) != set(requested) or (wanted != project):
        st.query_params.from_dict({"project": project, "runs": ",".join(chosen)})
    if len(chosen) < 1:
        c.empty("Pick runs to compare.")
        return None
    return project, chosen


def overlay(project: str, runs: list[str]) -> None:
    names = sorted(set().union(*map(set, c.fetch_many([("metric_names", (project, r), {}) for r in runs]))))
    if not names:
        c.empty("These runs have logged no metrics.")
        return None
    row = st.columns([2, 1, 2, 1])
    default = next((n for n in ("val_loss", "loss") if n in names), names[0])
    metrics = row[0].multiselect("Metrics", names, default=[default], key="cmp_metrics")
    x = row[1].segmented_control("X axis", ["step", "epoch", "time"], default="step", key="cmp_x", required=True)
    smoothing = row[2].slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="cmp_smoothing")
    points = row[3].selectbox("Points per line", [250, 500, 1000, 2000], index=1, key="cmp_points")
    c.live(overlay_charts, project, runs, metrics, x, smoothing, points)
    return names


def overlay_charts(project: str, runs: list[str], metrics: list[str], x: str, smoothing: float, points: int) -> None:
    columns = st.columns(2 if len(metrics) > 1 else 1)
    for index, metric in enumerate(metrics):
        frame = c.fetch("series", project, runs, metric, x=x, points=points)
        with columns[index % len(columns)]:
            if frame.empty:
                st.caption(f"{metric}: no points in these runs")
                continue
            c.show_chart(c.series_chart(frame, x=x, color="run", title=metric, smoothing=smoothing, zoom=True), height=340)


def config_diff(project: str, runs: list[str]) -> None:
    st.subheader("Config: what differs")
    diff = c.fetch("config_diff", project, runs)
    if diff is None or diff.empty:
        st.caption("The configs of these runs are identical." if len(runs) > 1 else "Pick two or more runs.")
        return
    st.dataframe(diff, hide_index=True, width="stretch", height=min(38 + 35 * len(diff), 500))
    st.caption(f"{len(diff)} key(s) differ; keys equal in every run are left out.")


def parallel(project: str, runs: list[str], names: list[str]) -> None:
    st.subheader("Hyperparameters vs a final metric")
    default = next((n for n in ("val_loss", "loss", "val_accuracy") if n in names), names[0])
    row = st.columns([1, 3])
    metric = row[0].selectbox("Final metric", names, index=names.index(default), key="cmp_final")
    finals = c.fetch("final_metrics", project, runs, metric)
    diff = c.fetch("config_diff", project, runs)
    frame = _hyper_frame(runs, diff, finals, metric)
    if frame is None:
        c.empty("Needs runs whose configs differ and which logged the chosen metric.")
        return
    axes = [col for col in frame.columns if col not in ("run",)]
    c.show_chart(parallel_chart(frame, axes, metric), height=340)
    st.caption("Each line is a run; each axis runs from its minimum (bottom) to its maximum (top); text values "
               "are placed in sorted order. Colour: the metric's final value.")


def _hyper_frame(runs: list[str], diff: pd.DataFrame, finals: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """One row per run: the config keys that differ (numbers; text as its sorted order) and the final metric."""
    if finals is None or finals.empty or finals["final"].isna().all():
        return None
    keys = [k for k in (diff["key"] if diff is not None and not diff.empty else []) if k in finals.columns]
    frame = finals.set_index("run").reindex([r for r in runs if r in set(finals["run"])])
    out = pd.DataFrame({"run": frame.index})
    for key in keys:
        values = frame[key].tolist()
        numeric = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce")
        if numeric.notna().all():
            out[key] = numeric.to_numpy(dtype=float)
        else:
            order = {v: i for i, v in enumerate(sorted({str(v) for v in values}))}
            out[key] = [float(order[str(v)]) for v in values]
    if len(out.columns) < 2:
        return None
    out[metric] = frame["final"].to_numpy(dtype=float)
    return out


def parallel_chart(frame: pd.DataFrame, axes: list[str], metric: str) -> alt.Chart:
    """Parallel coordinates in Vega-Lite: one line per run across the axes, each scaled to its min..max."""
    long = frame.melt(id_vars=["run"], value_vars=axes, var_name="key", value_name="raw")
    long["raw"] = pd.to_numeric(long["raw"], errors="coerce")
    bounds = long.groupby("key")["raw"].agg(["min", "max"])
    long = long.join(bounds, on="key")
    span = (long["max"] - long["min"]).where(lambda s: s > 0, 1.0)
    long["scaled"] = ((long["raw"] - long["min"]) / span).where(long["max"] > long["min"], 0.5)
    long = long.merge(frame[["run", metric]].rename(columns={metric: "final"}), on="run", how="left")
    # each axis is labelled with its range: "lr (0.001 – 0.01)"
    label = {k: f"{k} ({c.number(lo, 3)} – {c.number(hi, 3)})" for k, (lo, hi) in bounds.iterrows()}
    long["axis"] = long["key"].map(label)
    order = [label[k] for k in axes]
    x = alt.X("axis:N", sort=order, title=None, scale=alt.Scale(padding=0.3),
              axis=alt.Axis(labelAngle=0, labelLimit=220, orient="bottom", domain=False, ticks=False))
    lines = alt.Chart(long).mark_line(strokeWidth=2.5, opacity=0.85).encode(
        x=x,
        y=alt.Y("scaled:Q", axis=None, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("final:Q", title=f"final {metric}", scale=alt.Scale(scheme="viridis")),
        detail="run:N",
        tooltip=["run:N", alt.Tooltip("key:N", title="axis"), alt.Tooltip("raw:Q", title="value", format=".5g"),
                 alt.Tooltip("final:Q", title=metric, format=".5g")])
    points = lines.mark_circle(size=70, opacity=1)
    rules = alt.Chart(pd.DataFrame({"axis": order})).mark_rule(color="#999", strokeWidth=1).encode(x=x)
    return alt.layer(rules, lines, points)


def body() -> None:
    picked = pick()
    if picked is None:
        return
    project, runs = picked
    names = overlay(project, runs)
    left, right = st.columns([1, 1])
    with left:
        c.guarded(config_diff, project, runs)
    with right:
        if names and len(runs) > 1:
            c.guarded(parallel, project, runs, names)


c.guarded(body)
