"""Who may see the dashboard: `[dashboard] auth`.

- "" (the default): no login. The dashboard listens on loopback; to expose it without OIDC, put a
  proxy that authenticates in front (docs/dashboard.md, "Login": nginx with auth_basic).
- "oidc": Streamlit's own st.login against the OpenID Connect provider described in
  `[dashboard] auth_file`, a TOML file holding Streamlit's [auth] section. `trainmon dashboard` hands
  that file to Streamlit as its only secrets file.

`auth_file()` runs where the dashboard starts, so a bad file stops `trainmon dashboard` with the file
and key at fault instead of failing at the first login. `gate()` runs at the top of every script run
and stops it for anyone not logged in: pages, their queries and the navigation never run for them.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from trainmon.settings import Settings, SettingsError

MODES = ("", "oidc")
# What Streamlit's st.login() needs in [auth] for its default (unnamed) provider.
REQUIRED_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")
# The auth cookie is signed with cookie_secret: a guessable one lets anyone forge a login.
MIN_COOKIE_SECRET = 32
CALLBACK_PATH = "/oauth2callback"  # Streamlit's fixed route for the provider's redirect
SECRET_HINT = "python -c 'import secrets; print(secrets.token_hex(32))'"


def auth_file(settings: Settings) -> Path | None:
    """The absolute path of the [auth] file Streamlit must load, or None when there is no login.

    Raises SettingsError naming the setting, file and key to fix."""
    mode = settings.dashboard_auth
    if mode not in MODES:
        raise SettingsError(f"[dashboard] auth (TRAINMON_DASHBOARD_AUTH): expected \"\" (no login) or \"oidc\", "
                            f"got {mode!r}")
    if not mode:
        return None
    if not settings.dashboard_auth_file:
        raise SettingsError("[dashboard] auth = \"oidc\" needs [dashboard] auth_file (TRAINMON_DASHBOARD_AUTH_FILE): "
                            "a TOML file with Streamlit's [auth] section; see docs/dashboard.md, Login")
    path = Path(settings.dashboard_auth_file).expanduser().resolve()
    try:
        section = tomllib.loads(path.read_text()).get("auth")
    except OSError as exc:
        raise SettingsError(f"[dashboard] auth_file {path}: cannot read it ({exc.strerror}); create it with an "
                            f"[auth] section holding {', '.join(REQUIRED_KEYS)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"[dashboard] auth_file {path}: not valid TOML ({exc})") from None
    if not isinstance(section, dict):
        raise SettingsError(f"[dashboard] auth_file {path}: no [auth] section; add one holding "
                            f"{', '.join(REQUIRED_KEYS)}")
    for key in REQUIRED_KEYS:
        value = section.get(key)
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"[dashboard] auth_file {path}: [auth] {key} is missing or empty "
                                f"(docs/dashboard.md, Login)")
    _check_values(path, section)
    if importlib.util.find_spec("authlib") is None:  # else st.login fails at the first visitor's click
        raise SettingsError("[dashboard] auth = \"oidc\" needs Authlib: pip install 'streamlit[auth]' "
                            "(part of trainmon[server])")
    return path


def _check_values(path: Path, section: dict) -> None:
    where = f"[dashboard] auth_file {path}: [auth]"
    for key in ("redirect_uri", "server_metadata_url"):
        if not section[key].startswith(("http://", "https://")):
            raise SettingsError(f"{where} {key} must be an absolute http:// or https:// URL, got {section[key]!r}")
    if not section["redirect_uri"].endswith(CALLBACK_PATH):
        raise SettingsError(f"{where} redirect_uri must be the dashboard's public URL ending in {CALLBACK_PATH} "
                            f"(and be registered as such with the provider), got {section['redirect_uri']!r}")
    if len(section["cookie_secret"]) < MIN_COOKIE_SECRET:
        raise SettingsError(f"{where} cookie_secret is shorter than {MIN_COOKIE_SECRET} characters: it signs the "
                            f"login cookie; make one with {SECRET_HINT}")


def gate(settings: Settings) -> None:
    """Show the login to anyone not logged in and stop the script run; show a logged-in user who they are
    and a logout button in the sidebar. Does nothing without [dashboard] auth."""
    import streamlit as st  # here, not at the top: `trainmon dashboard` imports this module to validate

    if not settings.dashboard_auth:
        return
    logged_in = st.user.get("is_logged_in")  # None: Streamlit loaded no [auth] secrets
    if logged_in is None:
        st.error("[dashboard] auth is \"oidc\" but Streamlit has no [auth] secrets: start the dashboard with "
                 "`trainmon dashboard`, which hands it [dashboard] auth_file.")
        st.stop()
    if not logged_in:
        st.title("trainmon")
        st.write("Log in to see the dashboard.")
        if st.button("Log in", type="primary"):
            st.login()
        st.stop()
    with st.sidebar:
        st.caption(f"Logged in as **{_display_name()}**")
        if st.button("Log out"):
            st.logout()


def _display_name() -> str:
    import streamlit as st

    # Providers fill different claims; `sub` is the one every ID token has.
    for claim in ("name", "preferred_username", "email", "sub"):
        value = st.user.get(claim)
        if value:
            return str(value)
    return "unknown user"
