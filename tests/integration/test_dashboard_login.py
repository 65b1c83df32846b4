"""The dashboard's login ([dashboard] auth = "oidc", dashboard/auth.py).

Unit tests: the validation `trainmon dashboard` runs before starting Streamlit.
Browser tests: `trainmon dashboard` with Streamlit's st.login against a local OpenID Connect provider
(oidc-provider-mock, a test dependency) on 127.0.0.1, driven in headless Chromium (tests/headless.py):
an anonymous visitor gets only the login, the login round trip through the provider shows the page and
who is logged in, logout returns to the login, and without auth the pages open as before. ClickHouse is
not needed: the dashboard points at a port nothing listens on, so a page that runs at all shows its
"did not answer" warning, which an anonymous visitor must never see.
The nginx alternative: deploy/nginx/trainmon-dashboard.conf, as shipped but for ports and files, in front
of the dashboard without auth: 401 without the password (the websocket too), the page with it.
Without Chromium, the provider or nginx these tests are skipped, or fail under CI=true. Logs of the
processes go to .trainmon/screenshots/ (git-ignored).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import _unavailable
from tests.headless import Chromium, Dashboard, find_chromium
from trainmon import cli
from trainmon.dashboard import auth
from trainmon.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".trainmon" / "screenshots"  # git-ignored, beside test_dashboard_browser.py's logs
PROVIDER_PORT, AUTH_PORT, NO_CLICKHOUSE_PORT, OPEN_PORT, NGINX_PORT, NGINX_HTTP_PORT = range(23501, 23507)
PROVIDER = f"http://127.0.0.1:{PROVIDER_PORT}"
USER = {"sub": "alice", "name": "Alice Example", "email": "alice@example.com"}
NO_CLICKHOUSE = "did not answer"  # a page's warning when its queries ran (and found no ClickHouse)
NAVIGATION = ["Runs", "Compare", "Cluster", "Alerts"]  # the sidebar links st.navigation draws
NGINX_EXAMPLE = ROOT / "deploy" / "nginx" / "trainmon-dashboard.conf"
NGINX_USER, NGINX_PASSWORD = "alice", "correct horse"


def auth_toml(redirect_uri: str = f"http://127.0.0.1:{AUTH_PORT}/oauth2callback", drop: str = "",
              **values: str) -> str:
    section = {"redirect_uri": redirect_uri, "cookie_secret": "c" * 64, "client_id": "trainmon-dashboard",
               "client_secret": "test-secret", "server_metadata_url": f"{PROVIDER}/.well-known/openid-configuration",
               **values}
    section.pop(drop, None)
    return "[auth]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in section.items())


def oidc(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    return Settings(dashboard_auth="oidc", dashboard_auth_file=str(path))


# ---------------------------------------------------------------- validation (no services)

def test_no_login_by_default() -> None:
    assert auth.auth_file(Settings()) is None


@pytest.mark.parametrize("mode", ["OIDC", "basic", "none"])
def test_an_unknown_auth_mode_is_refused(mode: str) -> None:
    with pytest.raises(SettingsError, match=r"\[dashboard\] auth .*\"oidc\", got '" + mode):
        auth.auth_file(Settings(dashboard_auth=mode))


def test_oidc_needs_an_auth_file() -> None:
    with pytest.raises(SettingsError, match=r"needs \[dashboard\] auth_file"):
        auth.auth_file(Settings(dashboard_auth="oidc"))


def test_a_missing_auth_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError, match=re.escape(f"{missing}: cannot read it")):
        auth.auth_file(Settings(dashboard_auth="oidc", dashboard_auth_file=str(missing)))


@pytest.mark.parametrize("text, message", [
    ("[auth\n", "not valid TOML"),
    ("[server]\nport = 1\n", r"no \[auth\] section"),
])
def test_a_file_without_an_auth_section_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        auth.auth_file(oidc(tmp_path, text))


@pytest.mark.parametrize("key", auth.REQUIRED_KEYS)
def test_each_key_streamlit_needs_is_required(tmp_path: Path, key: str) -> None:
    settings = oidc(tmp_path, auth_toml(drop=key))
    with pytest.raises(SettingsError, match=re.escape(f"{tmp_path / 'auth.toml'}: [auth] {key} is missing")):
        auth.auth_file(settings)
    with pytest.raises(SettingsError, match=rf"\[auth\] {key} is missing or empty"):
        auth.auth_file(oidc(tmp_path, auth_toml(**{key: " "})))


@pytest.mark.parametrize("values, message", [
    ({"redirect_uri": "http://127.0.0.1:8501/"}, "redirect_uri must be the dashboard's public URL ending in"),
    ({"redirect_uri": "127.0.0.1:8501/oauth2callback"}, "redirect_uri must be an absolute"),
    ({"server_metadata_url": "idp.example/.well-known/openid-configuration"}, "server_metadata_url must be an"),
    ({"cookie_secret": "short"}, "cookie_secret is shorter than 32 characters.*token_hex"),
])
def test_values_streamlit_would_fail_on_later_are_refused(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        auth.auth_file(oidc(tmp_path, auth_toml(**values)))


def test_oidc_needs_authlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = oidc(tmp_path, auth_toml())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "authlib" else real(name, *a))
    with pytest.raises(SettingsError, match=re.escape("needs Authlib: pip install 'streamlit[auth]'")):
        auth.auth_file(settings)


def test_a_valid_file_is_returned_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "auth.toml").write_text(auth_toml())
    monkeypatch.chdir(tmp_path)
    assert auth.auth_file(Settings(dashboard_auth="oidc", dashboard_auth_file="auth.toml")) == tmp_path / "auth.toml"


def test_trainmon_dashboard_stops_before_streamlit_on_a_bad_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "auth.toml").write_text(auth_toml(drop="client_secret"))
    monkeypatch.setenv("TRAINMON_DASHBOARD_AUTH", "oidc")
    monkeypatch.setenv("TRAINMON_DASHBOARD_AUTH_FILE", str(tmp_path / "auth.toml"))
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("Streamlit started despite a bad auth file"))
    assert cli.main(["dashboard", "--port", str(AUTH_PORT)]) == 2
    assert f"{tmp_path / 'auth.toml'}: [auth] client_secret is missing" in capsys.readouterr().err


# ---------------------------------------------------------------- in a browser

@pytest.fixture(scope="module")
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        _unavailable("no Chromium: apt-get install -y chromium")
    return binary


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """oidc-provider-mock on 127.0.0.1 with one predefined user; any client id and secret are accepted."""
    if importlib.util.find_spec("oidc_provider_mock") is None:
        _unavailable("no OIDC provider mock: pip install -e '.[test]' (oidc-provider-mock)")
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / "oidc-provider.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1",
                                    "--port", str(PROVIDER_PORT), "--user-claims", json.dumps(USER)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{PROVIDER}/.well-known/openid-configuration", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the OIDC provider mock did not come up on {PROVIDER}: "
                                f"see {LOGS / 'oidc-provider.log'}")
                time.sleep(0.2)
        yield PROVIDER
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def _start_dashboard(port: int, log: str, **env: str) -> Dashboard:
    """`trainmon dashboard` on `port` without ClickHouse; no login unless `env` sets one (not the shell's)."""
    return Dashboard({"TRAINMON_CLICKHOUSE_URL": f"http://127.0.0.1:{NO_CLICKHOUSE_PORT}",
                      "TRAINMON_DASHBOARD_REFRESH_S": "0", "TRAINMON_DASHBOARD_AUTH": "", **env},
                     port=port, log=LOGS / log)


@pytest.fixture(scope="module")
def login_dashboard(provider: str, chromium_binary: str, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Dashboard]:
    path = tmp_path_factory.mktemp("login") / "auth.toml"
    path.write_text(auth_toml())
    path.chmod(0o600)
    with _start_dashboard(AUTH_PORT, "dashboard-login.log", TRAINMON_DASHBOARD_AUTH="oidc",
                          TRAINMON_DASHBOARD_AUTH_FILE=str(path)) as running:
        yield running


@pytest.fixture
def browser(chromium_binary: str) -> Iterator[Chromium]:
    """A new Chromium each test: a fresh profile, so no login cookie carries over."""
    with Chromium(chromium_binary) as chromium:
        yield chromium


def _evaluate(browser: Chromium, expression: str) -> object:
    return browser.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def _wait_for(browser: Chromium, condition: str, timeout: float = 30) -> None:
    """Wait until the JavaScript `condition` is true on whatever page the tab is on (the provider's
    pages are not Streamlit's, so Chromium.load's "rendered" does not apply there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _evaluate(browser, condition):
                return
        except RuntimeError:  # the document was replaced while evaluating
            pass
        time.sleep(0.1)
    where = _evaluate(browser, "location.href + '\\n' + (document.body ? document.body.innerText : '')")
    raise TimeoutError(f"not true within {timeout} s: {condition}\non {str(where)[:1500]}")


def _click(browser: Chromium, selector: str, text: str = "") -> None:
    """Click the first element matching `selector` (whose text is `text`, when given)."""
    found = _evaluate(browser, f"""(() => {{
        const el = [...document.querySelectorAll({json.dumps(selector)})]
            .find(e => !{json.dumps(text)} || e.innerText.trim() === {json.dumps(text)});
        if (el) el.click();
        return !!el;
    }})()""")
    assert found, f"nothing to click: {selector} {text!r}"


def _assert_only_the_login(text: str) -> None:
    assert "Log in to see the dashboard." in text
    assert NO_CLICKHOUSE not in text, "a page ran its queries for an anonymous visitor"
    assert "ClickHouse" not in text and "Logged in as" not in text
    assert not [link for link in NAVIGATION if link in text.split("\n")], "the navigation was drawn"


@pytest.mark.integration
def test_an_anonymous_visitor_sees_only_the_login(login_dashboard: Dashboard, browser: Chromium) -> None:
    rendered = browser.load(f"{login_dashboard.url}/run?project=p&run=r", ["Log in"], timeout=30)
    _assert_only_the_login(rendered.text)


@pytest.mark.integration
def test_login_round_trip_shows_the_page_and_the_user_then_logout(login_dashboard: Dashboard,
                                                                    browser: Chromium) -> None:
    started = time.perf_counter()
    browser.load(f"{login_dashboard.url}/run", ["Log in"], timeout=30)
    _click(browser, "button", "Log in")
    _wait_for(browser, f"location.origin === {json.dumps(PROVIDER)} && "
                       f"!!document.querySelector('button[name=sub][value={USER['sub']}]')")
    _click(browser, f"button[name=sub][value={USER['sub']}]")  # the provider's "authenticate as alice"
    _wait_for(browser, f"location.origin === {json.dumps(login_dashboard.url)} && "
                       f"document.body.innerText.includes('Logged in as')", timeout=30)
    logged_in = time.perf_counter() - started

    rendered = browser.load(f"{login_dashboard.url}/run", [f"Logged in as {USER['name']}", "Log out"], timeout=30)
    assert rendered.exceptions == 0 and "Traceback" not in rendered.text, rendered.text[-2000:]
    assert all(link in rendered.text for link in NAVIGATION)
    assert any(NO_CLICKHOUSE in error for error in rendered.errors), "the Run page did not run its queries"

    _click(browser, "button", "Log out")
    # Streamlit ends the session at the provider too (its end_session_endpoint), which asks to confirm.
    _wait_for(browser, f"location.origin === {json.dumps(PROVIDER)} && !!document.querySelector('form button')")
    _click(browser, "form button", "End session")
    _wait_for(browser, f"location.origin === {json.dumps(login_dashboard.url)} && "
                       "document.body.innerText.includes('Log in to see the dashboard.')")
    again = browser.load(f"{login_dashboard.url}/run", ["Log in"], timeout=30)  # the login cookie is gone
    _assert_only_the_login(again.text)
    print(f"login round trip {logged_in:.1f} s, with logout {time.perf_counter() - started:.1f} s")


@pytest.fixture(scope="module")
def open_dashboard(chromium_binary: str) -> Iterator[Dashboard]:
    """The dashboard without [dashboard] auth."""
    with _start_dashboard(OPEN_PORT, "dashboard-open.log") as running:
        yield running


@pytest.mark.integration
def test_without_auth_the_pages_open_without_login(open_dashboard: Dashboard, browser: Chromium) -> None:
    rendered = browser.load(f"{open_dashboard.url}/run", ["Auto-refresh", *NAVIGATION], timeout=30)
    assert "Log in" not in rendered.text and "Logged in as" not in rendered.text
    assert any(NO_CLICKHOUSE in error for error in rendered.errors)


# ---------------------------------------------------------------- the nginx alternative

@pytest.fixture(scope="module")
def nginx(open_dashboard: Dashboard, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    """deploy/nginx/trainmon-dashboard.conf as shipped, but for its ports, certificate and password file, in
    front of the dashboard without auth: its HTTPS URL and a TLS context that trusts its certificate."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        _unavailable("no nginx: apt-get install -y nginx")
    home = tmp_path_factory.mktemp("nginx")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", home / "key.pem", "-out", home / "cert.pem"],
                   check=True, capture_output=True)
    hashed = subprocess.run(["openssl", "passwd", "-apr1", NGINX_PASSWORD], check=True, capture_output=True, text=True)
    (home / "htpasswd").write_text(f"{NGINX_USER}:{hashed.stdout.strip()}\n")
    server = NGINX_EXAMPLE.read_text()
    for shipped, here in [("listen 80;", f"listen 127.0.0.1:{NGINX_HTTP_PORT};"),
                          ("listen 443 ssl;", f"listen 127.0.0.1:{NGINX_PORT} ssl;"),
                          ("/etc/ssl/certs/dashboard.example.org.pem", f"{home}/cert.pem"),
                          ("/etc/ssl/private/dashboard.example.org.key", f"{home}/key.pem"),
                          ("/etc/nginx/trainmon.htpasswd", f"{home}/htpasswd"),
                          ("http://127.0.0.1:8501", open_dashboard.url)]:
        assert shipped in server, f"{NGINX_EXAMPLE} no longer has {shipped!r}: update this test"
        server = server.replace(shipped, here)
    (home / "server.conf").write_text(server)
    temp = " ".join(f"{kind}_temp_path {home};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (home / "nginx.conf").write_text(f"pid {home}/nginx.pid; error_log {home}/error.log;\nevents {{}}\n"
                                     f"http {{ access_log off; {temp} include {home}/server.conf; }}\n")
    # One foreground process (no master, no workers switching user): stopped by its PID like the others.
    process = subprocess.Popen([binary, "-p", str(home), "-c", str(home / "nginx.conf"),
                                "-g", "daemon off; master_process off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    context = ssl.create_default_context(cafile=str(home / "cert.pem"))
    url = f"https://127.0.0.1:{NGINX_PORT}"
    try:
        deadline = time.monotonic() + 20
        while _status(f"{url}/_stcore/health", context) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not come up on {url}: {(home / 'error.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, context
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def _status(url: str, context: ssl.SSLContext, user: str = "", password: str = "") -> int:
    request = urllib.request.Request(url, headers={"Authorization": _basic(user, password)} if user else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.integration
def test_nginx_example_asks_for_the_password(nginx: tuple[str, ssl.SSLContext]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, context = nginx
    assert _status(f"{url}/run", context) == 401
    assert _status(f"{url}/run", context, NGINX_USER, "wrong") == 401
    assert _status(f"{url}/run", context, NGINX_USER, NGINX_PASSWORD) == 200
    stream = f"wss://127.0.0.1:{NGINX_PORT}/_stcore/stream"
    with pytest.raises(InvalidStatus, match="401"):  # the page's websocket, where the data flows, too
        connect(stream, ssl=context, subprotocols=["streamlit"], open_timeout=10)
    with connect(stream, ssl=context, subprotocols=["streamlit"], open_timeout=10,
                 additional_headers={"Authorization": _basic(NGINX_USER, NGINX_PASSWORD)}):
        pass  # opened: nginx passed the upgrade on


@pytest.mark.integration
def test_nginx_example_serves_the_page_with_the_password(nginx: tuple[str, ssl.SSLContext], browser: Chromium
                                                         ) -> None:
    url, _ = nginx
    browser.send("Security.setIgnoreCertificateErrors", ignore=True)  # the test's own certificate
    browser.send("Network.enable")  # the header goes with every request, the websocket's included
    browser.send("Network.setExtraHTTPHeaders", headers={"Authorization": _basic(NGINX_USER, NGINX_PASSWORD)})
    rendered = browser.load(f"{url}/run", ["Auto-refresh", *NAVIGATION], timeout=30)
    assert rendered.exceptions == 0
    assert any(NO_CLICKHOUSE in error for error in rendered.errors)
