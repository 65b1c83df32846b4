"""The trainmon dashboard: `trainmon dashboard` runs `streamlit run dashboard/app.py`.

Pages (one module each in dashboard/views/; not `pages/`, which would switch Streamlit to its older
directory-based navigation for a session's first request) are chosen by URL path; their selections
live in the URL's query parameters, so links from alerts open the right view: /run?project=P&run=R,
/host?host=H.
All reads go through dashboard/queries.py (parameterised, downsampled SQL), cached for a few seconds.
With [dashboard] auth = "oidc", dashboard/auth.py stops every script run of a visitor not logged in
before the navigation and pages run.
"""

from __future__ import annotations

import streamlit as st

from trainmon.dashboard import auth, components

st.set_page_config(page_title="trainmon", page_icon="📈", layout="wide",  # emoji: no request to fonts.gstatic.com
                   initial_sidebar_state="expanded")
settings = components.settings()
auth.gate(settings)  # before st.navigation: anonymous visitors get neither the pages nor their links

pages = [
    st.Page("views/runs.py", title="Runs", icon=":material/view_list:", url_path="runs", default=True),
    st.Page("views/run.py", title="Run", icon=":material/show_chart:", url_path="run"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page("views/cluster.py", title="Cluster", icon=":material/grid_view:", url_path="cluster"),
    st.Page("views/alerts.py", title="Alerts", icon=":material/notifications_active:", url_path="alerts"),
    st.Page("views/host.py", title="Host", icon=":material/dns:", url_path="host"),
]
page = st.navigation(pages, position="sidebar", expanded=True)

with st.sidebar:
    components.refresh_control()
    reader = settings.dashboard_reader
    st.caption(f"ClickHouse `{reader.clickhouse}` · database `{reader.clickhouse_database}` · "
               f"user `{reader.clickhouse_user}` · times in UTC")

page.run()
