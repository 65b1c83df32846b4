"""Runs: every run, filterable and sortable, with its live status, best value of a metric and alerts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from trainmon.dashboard import components as c

SORTS = {"started": "started_at", "last seen": "last_seen", "duration": "duration_s", "best": "best",
         "world size": "world_size", "alerts": "alerts_firing", "run": "run", "project": "project",
         "status": "status", "user": "user", "last step": "last_step", "events dropped": "events_dropped"}
STATUSES = ["running", "finished", "failed", "crashed", "killed", "lost"]

st.title("Runs")


def filters() -> dict:
    projects = c.fetch("projects")
    row = st.columns([1.2, 1.6, 1, 1, 1.6])
    wanted = c.param("project")
    options = ["(all)"] + list(projects) + ([wanted] if wanted and wanted not in projects else [])
    project = row[0].selectbox("Project", options, index=options.index(wanted) if wanted in options else 0,
                             key="f_project")
    status = row[1].multiselect("Status", STATUSES, default=[s for s in c.param_list("status") if s in STATUSES],
                                placeholder="any", key="f_status")
    tag = row[2].text_input("Tag", value=c.param("tag", "") or "", placeholder="any", key="f_tag")
    user = row[3].text_input("User", value=c.param("user", "") or "", placeholder="any", key="f_user")
    search = row[4].text_input("Search run / name", value=c.param("q", "") or "", placeholder="substring",
                                key="f_search")
    row = st.columns([1.2, 0.8, 1.2, 0.8, 0.8, 1.2])
    metric = row[0].text_input("Best of metric", value=c.param("metric", "val_loss") or "",
                               help="The 'best' column: the best value of this metric over the run (all ranks).",
                               key="f_metric")
    mode = row[1].selectbox("Best is", ["min", "max"], index=0 if c.param("mode", "min") == "min" else 1)
    sort = row[2].selectbox("Sort by", list(SORTS), index=0)
    descending = row[3].toggle("Descending", value=True)
    limit = row[4].selectbox("Show", [50, 200, 1000], index=1)
    return {"project": None if project == "(all)" else project, "status": status or None, "tag": tag or None,
            "user": user or None, "search": search or None, "metric": metric or None, "metric_mode": mode,
            "order_by": SORTS[sort], "descending": descending, "limit": limit}


def table(query: dict) -> None:
    runs = c.fetch("runs", **query)
    if runs.empty:
        c.empty("No runs match these filters." if any(query[k] for k in ("project", "status", "tag", "user", "search"))
                else "No runs yet: start one with `trainmon.init(...)` or `trainmon simulate`.")
        return
    counts = runs["status"].value_counts()
    cols = st.columns(5)
    cols[0].metric("Runs shown", len(runs))
    cols[1].metric("Running", int(counts.get("running", 0)))
    cols[2].metric("Finished", int(counts.get("finished", 0)))
    cols[3].metric("Failed / crashed", int(counts.get("failed", 0) + counts.get("crashed", 0)
                                          + counts.get("lost", 0)))
    cols[4].metric("Runs with firing alerts", int((runs["alerts_firing"] > 0).sum()))
    best = f"best {query['metric']}" if query["metric"] else "best"
    view = pd.DataFrame({
        "run": [c.run_link(p, r) for p, r in zip(runs["project"], runs["run"])],
        "project": runs["project"],
        "status": runs["status"],
        best: runs["best"],
        "alerts": runs["alerts_firing"],
        "last step": runs["last_step"],
        "last seen": [c.ago(t) for t in runs["last_seen"]],
        "user": runs["user"],
        "started": runs["started_at"],
        "duration": [c.duration(d) for d in runs["duration_s"]],
        "world size": runs["world_size"],
        "dropped": runs["events_dropped"],
        "tags": runs["tags"].map(list),
        "name": runs["name"],
    })
    selection = st.dataframe(
        c.colored(view, ["status"]), hide_index=True, width="stretch", key="runs_table", on_select="rerun",
        selection_mode="multi-row", height=min(38 + 35 * len(view), 640),
        column_config={
            # the link's text is the run id, taken back out of its URL
            "run": st.column_config.LinkColumn("run", display_text=r"run=([^&]*)$", help="Open the run's page"),
            "status": st.column_config.TextColumn("status", width="small"),
            best: st.column_config.NumberColumn(best, format="%.4g",
                                                help=f"{query['metric_mode']} of {query['metric']} over the run"),
            "alerts": st.column_config.NumberColumn("alerts", help="Alerts firing now", format="%d", width="small"),
            "last step": st.column_config.NumberColumn("last step", format="%d"),
            "tags": st.column_config.ListColumn("tags"),
            "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm"),
            "world size": st.column_config.NumberColumn("world size", format="%d", width="small"),
            "dropped": st.column_config.NumberColumn(
                "dropped", format="%d", width="small",
                help="Events the SDK dropped for good (queue cap, spool full, refused by Kafka): holes in the curves"),
        },
    )
    picked = [runs.iloc[i] for i in (selection.selection.rows if selection else [])]
    buttons = st.container(horizontal=True)
    if buttons.button("Open selected run", disabled=len(picked) != 1, icon=":material/show_chart:"):
        st.switch_page(c.PAGES["run"], query_params={"project": picked[0]["project"], "run": picked[0]["run"]})
    same_project = len({p["project"] for p in picked}) == 1
    if buttons.button("Compare selected", disabled=len(picked) < 2 or not same_project,
                      icon=":material/compare_arrows:",
                      help="Select two or more runs of one project in the table."):
        st.switch_page(c.PAGES["compare"], query_params={"project": picked[0]["project"],
                                                         "runs": ",".join(p["run"] for p in picked)})
    st.caption(f"Select rows to open or compare them. Updated {c.now():%H:%M:%S} UTC.")


def body() -> None:
    c.live(table, filters())


c.guarded(body)
