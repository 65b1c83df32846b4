"""Alerts: incidents (one page per root cause, with their members), what fires now, the history,
filters by rule, run, host and severity, and delivery outcomes."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from trainmon.dashboard import components as c

SEVERITIES = ["critical", "warning", "info"]
SINCE = {"1 h": timedelta(hours=1), "24 h": timedelta(days=1), "7 d": timedelta(days=7),
         "30 d": timedelta(days=30), "all": None}

st.title("Alerts")


def filters() -> dict:
    row = st.columns([1.2, 1.4, 1, 1, 1.2, 0.8])
    rule = row[0].text_input("Rule", value=c.param("rule", "") or "", placeholder="any",
                             help="Exact rule name, e.g. gpu_temperature_high")
    severity = row[1].multiselect("Severity", SEVERITIES,
                                  default=[s for s in c.param_list("severity") if s in SEVERITIES], placeholder="any")
    project = row[2].text_input("Project", value=c.param("project", "") or "", placeholder="any")
    run = row[3].text_input("Run", value=c.param("run", "") or "", placeholder="any")
    host = row[4].text_input("Host", value=c.param("host", "") or "", placeholder="any")
    since = row[5].selectbox("Since", list(SINCE), index=1)
    return {"rule": rule.strip() or None, "severity": severity or None, "project": project.strip() or None,
            "run": run.strip() or None, "host": host.strip() or None, "since": since}


def view(query: dict) -> None:
    query = dict(query)  # the fragment re-runs with the same dict
    since = SINCE[query.pop("since")]

    # to the minute: one cached answer per minute and filter, not one per refresh
    since_at = (c.now() - since).replace(second=0, microsecond=0) if since else None
    scope = {k: query[k] for k in ("project", "run", "host")}
    firing, history, incidents, _ = c.fetch_many([("alerts", (), {**query, "firing_only": True}),
                                                  ("alerts", (), {**query, "since": since_at}),
                                                  ("incidents", (), {**scope, "since": since_at}),
                                                  ("deliveries", (), {"limit": 500})])
    cols = st.columns(4)
    cols[0].metric("Firing now", len(firing))
    cols[1].metric("Critical firing", int((firing["severity"] == "critical").sum()) if not firing.empty else 0)
    cols[2].metric("Alerts in range", len(history["fingerprint"].unique()) if not history.empty else 0)
    cols[3].metric("Rules in range", history["rule"].nunique() if not history.empty else 0)

    st.subheader("Incidents")
    incidents_table(incidents, history)

    st.subheader("Firing now")
    if firing.empty:
        st.success("Nothing is firing.", icon=":material/check_circle:")
    else:
        c.alerts_table(firing, key="firing")

    st.subheader("History")
    if history.empty:
        st.caption("No alerts in this range.")
    else:
        timeline(history)
        c.alerts_table(history, key="history")

    st.subheader("Deliveries")
    fingerprints = list(dict.fromkeys(list(firing.get("fingerprint", [])) + list(history.get("fingerprint", []))
                                      + list(incidents.get("incident", []))))  # an incident's pages carry its id
    deliveries(fingerprints)


def incidents_table(incidents: pd.DataFrame, history: pd.DataFrame) -> None:
    """One row per incident (what was paged), its likely cause first; pick one to see its members."""
    if incidents is None or incidents.empty:
        st.caption("No incidents in this range (the pipeline's `incidents` section groups alerts into them; "
                   "docs/alerting.md).")
        return
    rows = [{
        "severity": i["severity"], "state": i["state"], "cause": i["summary"], "alerts": int(i["members_total"]),
        "rules": ", ".join(f"{rule} x{n}" if n > 1 else rule
                           for rule, n in pd.Series(list(i["member_rules"])).value_counts().items()),
        "hosts": ", ".join(i["hosts"]), "runs": ", ".join(i["runs"]), "started": c.utc(i["starts_at"]),
        "lasted": c.duration(((c.utc(i["ends_at"]) or c.now()) - c.utc(i["starts_at"])).total_seconds()),
        "id": i["incident"],
    } for _, i in incidents.iterrows()]
    st.dataframe(c.colored(pd.DataFrame(rows), ["severity", "state"]), hide_index=True, width="stretch",
                 key="incidents", height=min(38 + 35 * len(rows), 420),
                 column_config={"started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
                                "cause": st.column_config.TextColumn("likely cause", width="large")})
    chosen = st.selectbox("Members of incident", [r["id"] for r in rows], index=None, placeholder="pick an incident",
                          key="incident",
                          format_func=lambda i: next(f"{r['id']}: {r['cause'][:90]}" for r in rows if r["id"] == i))
    if chosen is not None:
        members = list(incidents.loc[incidents["incident"] == chosen, "members"].iloc[0])
        shown = history[history["fingerprint"].isin(members)] if not history.empty else history
        c.alerts_table(shown, key="incident-members")


def timeline(history: pd.DataFrame) -> None:
    data = history.copy()
    data["start"] = data["starts_at"]
    data["end"] = [c.utc(e) or c.now() for e in data["ends_at"]]
    data["subject"] = [_subject(row) for _, row in data.iterrows()]
    data = data.drop_duplicates(subset=["fingerprint", "starts_at"], keep="last")
    chart = alt.Chart(data).mark_bar(height=12, cornerRadius=2).encode(
        x=alt.X("start:T", title="time (UTC)", axis=alt.Axis(format=c.time_format(data["start"]))), x2="end:T",
        y=alt.Y("rule:N", title=None, axis=alt.Axis(labelLimit=220)),
        color=alt.Color("severity:N", scale=alt.Scale(domain=SEVERITIES, range=["#d62728", "#ff7f0e", "#1f77b4"])),
        tooltip=["rule:N", "severity:N", "state:N", "subject:N", alt.Tooltip("start:T"), alt.Tooltip("end:T")],
    )
    c.show_chart(chart.properties(height=alt.Step(26)), height=None)


def _subject(row: pd.Series) -> str:
    labels = row.get("labels") if isinstance(row.get("labels"), dict) else {}
    return ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity"))


def deliveries(fingerprints: list[str]) -> None:
    frame = c.fetch("deliveries", limit=500)
    if frame is None or frame.empty:
        st.caption("No delivery attempts recorded (are routes configured? see docs/routes.md).")
        return
    if fingerprints:
        frame = frame[frame["fingerprint"].isin(fingerprints)]
    if frame.empty:
        st.caption("No delivery attempts for the alerts shown.")
        return
    outcomes = frame["outcome"].value_counts()
    cols = st.columns(3)
    cols[0].metric("Delivered", int(outcomes.get("delivered", 0)))
    cols[1].metric("Retrying", int(outcomes.get("retrying", 0)))
    cols[2].metric("Failed", int(outcomes.get("failed", 0)))
    view = frame
    shown = [col for col in ("time", "rule", "state", "route", "kind", "attempt", "outcome", "http_status",
                             "latency_ms", "error") if col in view]
    st.dataframe(c.colored(view[shown], ["outcome"]), hide_index=True, width="stretch",
                 height=min(38 + 35 * len(view), 420),
                 column_config={"time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss"),
                                "latency_ms": st.column_config.NumberColumn("latency ms", format="%.0f")})


c.guarded(lambda: c.live(view, filters()))
