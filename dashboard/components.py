"""What the pages share: settings, the cached read side, the auto-refresh control, charts and formats.

Every read goes through `fetch(method, ...)`, which calls `trainmon.dashboard.queries.Queries` (the only place
with SQL) and keeps the answer for TTL_S seconds, so a page re-rendered by the auto-refresh, or opened
by several people at once, asks ClickHouse at most once per TTL for the same view.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import altair as alt
import pandas as pd
import streamlit as st

from trainmon import settings as settings_module
from trainmon.clickhouse import login_user, password_file

TTL_S = 5  # seconds a query answer is reused; below the shortest auto-refresh interval
REFRESH_CHOICES = [0, 5, 10, 30, 60]  # seconds; 0 = off
PAGES = {  # page file, relative to app.py: what st.page_link / st.switch_page take
    "runs": "views/runs.py", "run": "views/run.py", "compare": "views/compare.py",
    "cluster": "views/cluster.py", "alerts": "views/alerts.py", "host": "views/host.py",
}
SEVERITY_COLOR = {"critical": "red", "warning": "orange", "info": "blue"}  # st.badge / markdown colours
STATUS_COLOR = {"running": "green", "finished": "blue", "failed": "red", "crashed": "red", "killed": "orange",
                "lost": "gray"}
CELL_COLORS = {  # table cell backgrounds (pandas Styler) for status, severity, state and outcome words
    "running": "#d4f4dd", "finished": "#dbe9ff", "failed": "#ffd6d6", "crashed": "#ffd6d6", "killed": "#ffe6c7",
    "lost": "#e6e6e6", "critical": "#ffd6d6", "warning": "#ffe6c7", "info": "#dbe9ff", "firing": "#ffd6d6",
    "resolved": "#d4f4dd", "delivered": "#d4f4dd", "retrying": "#ffe6c7", "silent": "#e6e6e6",
    "straggler": "#ffe6c7", "ok": "#d4f4dd",
}
PALETTE = "tableau10"  # categorical colours of lines: distinct, unlike the theme's shades of blue


# ---------------------------------------------------------------- settings and the read side

def settings() -> settings_module.Settings:
    """The effective settings (file, then TRAINMON_* variables), read on each rerun: it is cheap."""
    return settings_module.load()


def _key(s: settings_module.Settings) -> tuple[str, str, str, str, int]:
    """What tells the reader's clients apart, never holding the password: where, which database, who, and
    the password's file with its change time (a rotated file makes a new client; an inline password
    changed in the config takes a dashboard restart)."""
    reader = s.dashboard_reader
    path = password_file(reader)
    changed = path.stat().st_mtime_ns if path is not None and path.is_file() else 0
    return (reader.clickhouse, reader.clickhouse_database, login_user(reader), str(path or ""), changed)


@st.cache_resource(show_spinner=False)
def _queries(key: tuple[str, str, str, str, int]) -> Any:
    """The reader's client for `key`, made from the current settings (the key only tells clients apart)."""
    from trainmon.dashboard.queries import Queries
    from trainmon.clickhouse import connect

    # One client serves every browser session (each in its own thread): no ClickHouse session id, whose
    # lock would make concurrent queries of one client fail.
    return Queries(connect(settings().dashboard_reader, autogenerate_session_id=False))


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=1000)
def _fetch(key: tuple[str, str, str, str, int], method: str, args: tuple, kwargs: tuple) -> Any:
    return getattr(_queries(key), method)(*args, **dict(kwargs))


def fetch(method: str, *args: Any, **kwargs: Any) -> Any:
    """Queries.<method>(*args, **kwargs), cached for TTL_S seconds per connection and arguments."""
    return _fetch(_key(settings()), method, tuple(args), tuple(sorted(kwargs.items())))


def fetch_many(calls: list[tuple[str, tuple, dict]], workers: int = 8) -> list[Any]:
    """Several fetch() calls at once, each in its own thread (ClickHouse answers them in parallel).

    The threads carry this script run's context, as Streamlit's multithreading guide says, so the
    cache works there as it does in the script."""
    if len(calls) <= 1:
        return [fetch(method, *args, **kwargs) for method, args, kwargs in calls]
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    ctx = get_script_run_ctx()
    key = _key(settings())

    def call(item: tuple[str, tuple, dict]) -> Any:
        add_script_run_ctx(threading.current_thread(), ctx)
        method, args, kwargs = item
        return _fetch(key, method, tuple(args), tuple(sorted(kwargs.items())))

    with ThreadPoolExecutor(max_workers=min(workers, len(calls)), thread_name_prefix="trainmon-fetch") as pool:
        return list(pool.map(call, calls))


def prefetch(calls: list[tuple[str, tuple, dict]]) -> None:
    """Warm the cache with calls a page is about to make, all at once; their errors surface later, where
    the page makes the call itself."""
    try:
        fetch_many(calls)
    except database_errors():
        pass


def clear_cache() -> None:
    _fetch.clear()


def database_errors() -> tuple[type[BaseException], ...]:
    from clickhouse_connect.driver.exceptions import Error

    return (Error, ConnectionError, OSError)


def guarded(body: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run a page body; a ClickHouse that is away or refuses shows as one message, not a traceback."""
    try:
        body(*args, **kwargs)
    except database_errors() as exc:
        s = settings()
        reader = s.dashboard_reader
        st.error(f"ClickHouse at {reader.clickhouse} (database `{reader.clickhouse_database}`, user "
                 f"`{reader.clickhouse_user}`) did not answer: {str(exc).splitlines()[0][:400]}", icon="⚠️")
        st.caption("Start the local services with `trainmon services start`, or check the [clickhouse] and "
                   "[dashboard] settings (`trainmon config`).")


# ---------------------------------------------------------------- refresh

def refresh_control() -> None:
    """Sidebar: auto-refresh interval (stored in session state as refresh_s) and a refresh button."""
    default = settings().dashboard_refresh_s
    choices = sorted(set(REFRESH_CHOICES) | {default})
    st.sidebar.selectbox("Auto-refresh", choices, index=choices.index(default), key="refresh_s",
                         format_func=lambda s: "off" if s == 0 else f"every {s} s",
                         help="Re-read the live parts of the page at this interval.")
    if st.sidebar.button("Refresh now", icon=":material/refresh:", width="stretch"):
        clear_cache()


def live(body: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Render `body` as a fragment that re-runs alone every refresh interval (or once when off)."""
    seconds = st.session_state.get("refresh_s") or None
    st.fragment(run_every=seconds)(lambda: guarded(body, *args, **kwargs))()


# ---------------------------------------------------------------- query parameters

def param(name: str, default: str | None = None) -> str | None:
    value = st.query_params.get(name)
    return value if value else default


def param_list(name: str) -> list[str]:
    """A list from ?name=a&name=b or ?name=a,b."""
    out: list[str] = []
    for value in st.query_params.get_all(name):
        out += [v for v in value.split(",") if v]
    return list(dict.fromkeys(out))


def run_link(project: str, run: str) -> str:
    """Relative URL of a run's page (works under any base path)."""
    from urllib.parse import urlencode

    return "run?" + urlencode({"project": project, "run": run})


def host_link(host: str) -> str:
    from urllib.parse import urlencode

    return "host?" + urlencode({"host": host})


# ---------------------------------------------------------------- formats

def now() -> datetime:
    return datetime.now(timezone.utc)


def now_floor(seconds: int = TTL_S) -> datetime:
    """Now, floored to `seconds`: the end of a live range, the same for every query of one page load
    (and of the cache's lifetime), so those queries share cache entries."""
    stamp = now().timestamp()
    return datetime.fromtimestamp(stamp - stamp % seconds, timezone.utc)


def utc(value: Any) -> datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        return None
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def duration(seconds: Any) -> str:
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)) or pd.isna(seconds):
        return "–"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def ago(when: Any) -> str:
    stamp = utc(when)
    if stamp is None:
        return "never"
    seconds = max(0.0, (now() - stamp).total_seconds())
    if 60 <= seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    return duration(seconds) + " ago"


def number(value: Any, digits: int = 4) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–" if value is None else str(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 1}} -> {"optimizer.lr": 1}; lists stay values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1] if prefix else "value": value}


# ---------------------------------------------------------------- charts

GROUPS = [  # (panel title, test on a metric name), first match wins
    ("Loss", lambda n: "loss" in n),
    ("Accuracy", lambda n: "acc" in n),
    ("Precision / recall / F1", lambda n: any(k in n for k in ("precision", "recall", "f1"))),
    ("Learning rate", lambda n: n == "lr" or "learning_rate" in n or n.endswith("/lr") or n.endswith("_lr")),
]


def group_metrics(names: Iterable[str]) -> dict[str, list[str]]:
    """Metric names into the Run page's panels; the rest go to 'Other'."""
    panels: dict[str, list[str]] = {title: [] for title, _ in GROUPS}
    other: list[str] = []
    for name in sorted(names):
        lowered = name.lower()
        for title, test in GROUPS:
            if test(lowered):
                panels[title].append(name)
                break
        else:
            other.append(name)
    panels["Other"] = other
    return {title: names for title, names in panels.items() if names}


def smooth(frame: pd.DataFrame, column: str, by: str, weight: float) -> pd.Series:
    """TensorBoard-style smoothing: a debiased EMA of `column` within each `by` group, in x order."""
    if weight <= 0 or frame.empty:
        return frame[column]
    return frame.groupby(by, sort=False)[column].transform(
        lambda s: s.ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean())


def series_chart(frame: pd.DataFrame, *, x: str, color: str, title: str = "", y_title: str = "",
                 smoothing: float = 0.0, band: bool = True, rules: pd.DataFrame | None = None,
                 log_y: bool = False, color_title: str | None = None, zoom: bool = False) -> alt.Chart:
    """Downsampled series (x, min, max, mean, [last]) as lines, their min..max band and alert rules.

    x is "step" (quantitative) or "time" (temporal); `color` names the column that tells lines apart.
    Show it with show_chart(chart, height=...): Streamlit sizes charts itself.
    """
    data = frame.copy()
    for column in ("min", "max", "mean"):
        if column in data:
            data[column] = pd.to_numeric(data[column], errors="coerce").replace([math.inf, -math.inf], math.nan)
    if log_y:  # a log axis cannot show 0 or below
        for column in ("min", "max", "mean"):
            data[column] = data[column].where(data[column] > 0)
    data = data.sort_values([color, "x"])
    data["value"] = smooth(data, "mean", color, smoothing)
    x_enc = alt.X("x:T", title="time (UTC)", axis=alt.Axis(format=time_format(data["x"]))) if x == "time" \
        else alt.X("x:Q", title=x)
    y_scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    many = data[color].nunique() > 4  # a row on top holds four; more go down the right side
    legend = alt.Legend(title=None, orient="right" if many else "top", labelLimit=160 if many else 260,
                        symbolType="stroke", symbolStrokeWidth=3, symbolOpacity=1, labelFontSize=12)
    base = alt.Chart(data).encode(x=x_enc, color=alt.Color(f"{color}:N", legend=legend,
                                                           scale=alt.Scale(scheme=PALETTE)))
    tooltip = [alt.Tooltip(f"{color}:N", title=color_title or color),
               alt.Tooltip("x:T" if x == "time" else "x:Q", title=x,
                           format="%Y-%m-%d %H:%M:%S" if x == "time" else ","),
               alt.Tooltip("value:Q", title="smoothed" if smoothing > 0 else "mean", format=".5g")]
    if "min" in data and "max" in data:
        tooltip += [alt.Tooltip("min:Q", format=".5g"), alt.Tooltip("max:Q", format=".5g")]
    layers = []
    if band and "min" in data and "max" in data:
        layers.append(base.mark_area(opacity=0.15).encode(y=alt.Y("min:Q", scale=y_scale), y2="max:Q"))
    # no separate unsmoothed line: the band already shows the raw values (each bucket's min..max)
    layers.append(base.mark_line(strokeWidth=2).encode(
        y=alt.Y("value:Q", title=y_title or None, scale=y_scale), tooltip=tooltip))
    if rules is not None and not rules.empty:
        layers.append(alert_rules(rules, x))
    chart = alt.layer(*layers)
    if title:
        chart = chart.properties(title=alt.Title(title, anchor="start", fontSize=15))
    # pan and zoom cost every chart event listeners and signals (measurably slower page loads): opt-in
    return chart.interactive(bind_y=False) if zoom else chart


def time_format(values: pd.Series) -> str:
    """A d3 time format for an axis over these times (24-hour clock; the date once the span needs it)."""
    if values.empty:
        return "%H:%M"
    span = pd.to_datetime(values).max() - pd.to_datetime(values).min()
    if span <= pd.Timedelta(hours=20):
        return "%H:%M"
    if span <= pd.Timedelta(days=20):
        return "%b %d %H:%M"
    return "%Y-%m-%d"


def alert_rules(rules: pd.DataFrame, x: str) -> alt.Chart:
    """Vertical rules where alerts started: columns x, rule, severity, summary."""
    return alt.Chart(rules).mark_rule(strokeDash=[4, 3], strokeWidth=2).encode(
        x=alt.X("x:T" if x == "time" else "x:Q"),
        color=alt.value("#d62728"),
        tooltip=[alt.Tooltip("rule:N"), alt.Tooltip("severity:N"), alt.Tooltip("summary:N"),
                 alt.Tooltip("x:T" if x == "time" else "x:Q", title="at")],
    )


def show_chart(chart: alt.Chart, key: str | None = None, height: int | None = 300, width: str = "stretch") -> None:
    """Streamlit ignores a chart's own numeric height: give it here (None: the chart's, for Step sizes)."""
    if height is None:
        st.altair_chart(chart, width=width, key=key)
    else:
        st.altair_chart(chart, width=width, height=height, key=key)


def colored(frame: pd.DataFrame, columns: Iterable[str]) -> Any:
    """A Styler that colours the cells of `columns` by their word (status, severity, outcome...)."""
    def paint(value: Any) -> str:
        word = str(value).split()[-1] if value is not None and str(value).strip() else ""
        color = CELL_COLORS.get(word)
        return f"background-color: {color}" if color else ""

    present = [col for col in columns if col in frame.columns]
    return frame.style.map(paint, subset=present) if present else frame


def time_range(label: str, key: str, default: str = "1h", options: dict[str, timedelta] | None = None
               ) -> tuple[datetime, datetime]:
    options = options or {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6),
                          "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
    choice = st.segmented_control(label, list(options), default=default, key=key, required=True)
    end = now_floor()
    return end - options[choice or default], end


def empty(message: str) -> None:
    st.info(message, icon=":material/info:")


# ---------------------------------------------------------------- alerts

def alerts_table(alerts: pd.DataFrame, key: str | None = None) -> None:
    """Alerts as a table: severity, rule, state, subject, summary, since/for, link to the run or host page."""
    if alerts is None or alerts.empty:
        st.caption("No alerts.")
        return
    rows = []
    for _, a in alerts.iterrows():
        labels = a.get("labels") if isinstance(a.get("labels"), dict) else {}
        starts, ends = utc(a.get("starts_at")), utc(a.get("ends_at"))
        subject = ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity"))
        project, run, host = a.get("project") or "", a.get("run") or "", a.get("host") or labels.get("host")
        link = run_link(project, run) if run else (host_link(host) if host else None)
        rows.append({
            "severity": a.get("severity"),
            "state": a.get("state"),
            "rule": a.get("rule"),
            "open": link,
            "summary": a.get("summary") or "",
            "started": starts,
            "lasted": duration(((ends or now()) - starts).total_seconds()) if starts else "–",
            "subject": subject,
        })
    frame = pd.DataFrame(rows)
    st.dataframe(colored(frame, ["severity", "state"]), hide_index=True, width="stretch", key=key,
                 height=min(38 + 35 * len(rows), 560),
                 column_config={
                     "severity": st.column_config.TextColumn("severity", width="small"),
                     "state": st.column_config.TextColumn("state", width="small"),
                     "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
                     "open": st.column_config.LinkColumn("open", display_text="open ↗", width="small"),
                     "summary": st.column_config.TextColumn("summary", width="medium"),
                 })


def alerts_lines(alerts: pd.DataFrame, limit: int = 10) -> None:
    """Alerts as short lines (lighter than a table): severity badge, rule, summary, how long, link."""
    for _, a in alerts.head(limit).iterrows():
        severity = str(a.get("severity") or "info")
        starts = utc(a.get("starts_at"))
        lasted = duration((now() - starts).total_seconds()) if starts else "–"
        labels = a.get("labels") if isinstance(a.get("labels"), dict) else {}
        run, host = a.get("run") or "", a.get("host") or labels.get("host")
        link = run_link(a.get("project") or "", run) if run else (host_link(host) if host else "")
        summary = str(a.get("summary") or "").replace("[", "(").replace("]", ")")
        st.markdown(f":{SEVERITY_COLOR.get(severity, 'gray')}-badge[{severity}] **{a.get('rule')}** · {summary} "
                    f"· for {lasted}" + (f" · [open]({link})" if link else ""))
    if len(alerts) > limit:
        st.caption(f"and {len(alerts) - limit} more")

