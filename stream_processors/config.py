"""The pipeline file: which windows, alert rules and routes the processors run (docs/alerting.md).

Everything is validated when the processors start, and an error names the file, the line and the key,
e.g. `pipeline.yml:42: rules[3].params.patience: expected a positive integer, got -1`. Line numbers
come from PyYAML's node tree, walked alongside the data. `${NAME}` in any string value is replaced by
the environment variable NAME, so secrets (Slack webhook URLs, PagerDuty routing keys) stay out of
the file; `${NAME:-default}` falls back to `default` when NAME is unset or empty, as in the shell.
A few names are the trainmon settings rather than the environment (SETTINGS_VARIABLES):
`${TRAINMON_ALERTMANAGER_URL}` is the Alertmanager the settings point at, so the shipped file follows
`[alertmanager] url` and `[services] alertmanager_port` wherever they are set.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import yaml

from trainmon.stream_processors.alerts import RUN_LOST
from trainmon.stream_processors.incidents import KEYS, Cause, IncidentSpec
from trainmon.stream_processors.refusals import ROWS_REFUSED
from trainmon.stream_processors.rules import RULE_KINDS
from trainmon.stream_processors.rules.base import RuleSpec
from trainmon.stream_processors.rules.params import parse_duration
from trainmon.stream_processors.routes.base import RouteSpec
from trainmon.contract import SEVERITIES
from trainmon.errors import TrainmonError
from trainmon.settings import Settings, env_name

DEFAULT_PIPELINE = Path(__file__).with_name("pipeline.yml")
DEFAULT_WINDOWS_S = (10.0, 60.0, 300.0)
DEFAULT_REPEAT_INTERVAL_S = 3600.0
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8501"

_SECTIONS = ("windows", "alerting", "rules", "routes", "incidents")
_INCIDENT_KEYS = ("group_wait", "group_interval", "causes")
_CAUSE_KEYS = ("rule", "explains", "by")  # not `on`: YAML 1.1 reads it as true
_OWN_RULES = (RUN_LOST.name, ROWS_REFUSED.name)  # the processors' own alerts: edges may name them too
_ALERTING_KEYS = ("repeat_interval", "dashboard_url")
_RULE_KEYS = ("name", "kind", "severity", "selector", "params", "for", "labels", "annotations")
_ROUTE_KEYS = ("name", "kind", "url", "match", "params", "timeout_s", "retries", "backoff_s")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # Prometheus label names: Alertmanager takes no others
_REFERENCE = re.compile(r"\$\{(?P<body>[^}]*)(?P<close>\}?)")  # every `${...`, well-formed or not
_VARIABLE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?$", re.DOTALL)
# Variables the settings define (trainmon.settings.load reads the file and TRAINMON_* variables);
# the settings win over a variable of the same name the loader is handed.
SETTINGS_VARIABLES: dict[str, Callable[[Settings], str]] = {
    "TRAINMON_ALERTMANAGER_URL": lambda settings: settings.alertmanager,
}

# trainmon's own credentials (TRAINMON_KAFKA_SASL_PASSWORD, ..._PASSWORD_FILE, ...): a pipeline file
# is no place for them, and a rule's labels or annotations would carry them into every alert payload.
_CREDENTIALS = frozenset(env_name(f.name) for f in dataclasses.fields(Settings) if "password" in f.name)

KeyPath = tuple[str | int, ...]


class PipelineConfigError(TrainmonError):
    """The pipeline file is wrong; the message says where (file:line: key path) and what."""


@dataclass(frozen=True)
class PipelineConfig:
    rules: list[RuleSpec]
    routes: list[RouteSpec]
    windows_s: list[float]
    repeat_interval_s: float
    dashboard_url: str
    path: str
    incidents: IncidentSpec | None = None  # None: no `incidents` section, every alert is its own page


def load_pipeline(path: str | os.PathLike[str] = DEFAULT_PIPELINE,
                  environ: Mapping[str, str] | None = None, settings: Settings | None = None) -> PipelineConfig:
    """Read and validate the pipeline file; PipelineConfigError on the first problem.

    `settings` fill the SETTINGS_VARIABLES; without them, and only if the file uses one, they are
    loaded from `environ` ($TRAINMON_CONFIG or ./trainmon.toml, then TRAINMON_* variables)."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PipelineConfigError(f"{name}: cannot read the pipeline file: {exc.strerror or exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = getattr(exc, "problem", None) or str(exc)
        raise PipelineConfigError(f"{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    return _Reader(name, node, os.environ if environ is None else environ, settings).pipeline(data)


def _key_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", type(None): "nothing"}.get(
        type(value), repr(value))


class _Reader:
    """Turns the parsed document into specs, raising errors that point into the file."""

    def __init__(self, name: str, root: yaml.Node | None, environ: Mapping[str, str],
                 settings: Settings | None = None) -> None:
        self.name, self.root, self.environ, self._settings = name, root, environ, settings
        if root is not None:
            self._no_duplicate_keys(root, ())

    # --- errors that point into the file -------------------------------------------------------

    def line(self, path: KeyPath) -> int | None:
        """The line of the deepest node on `path` (the key's line for a mapping key)."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                             None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, path: KeyPath, message: str) -> PipelineConfigError:
        line = self.line(path)
        where = f"{self.name}:{line}" if line else self.name
        return PipelineConfigError(f"{where}: {_key_path(path)}: {message}" if path else f"{where}: {message}")

    def _no_duplicate_keys(self, node: yaml.Node, path: KeyPath) -> None:
        """PyYAML keeps the last of two equal keys silently; a repeated key is almost always a mistake."""
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        line = key.start_mark.line + 1
                        raise PipelineConfigError(f"{self.name}:{line}: {_key_path(path + (key.value,))}: "
                                                  f"duplicate key")
                    seen.add(key.value)
                    self._no_duplicate_keys(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._no_duplicate_keys(item, path + (index,))

    # --- typed reading -------------------------------------------------------------------------

    def mapping(self, value: Any, path: KeyPath, known: Sequence[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {_type_name(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(path, f"keys must be strings, got {key!r}")
            if known is not None and key not in known:
                raise self.error(path + (key,), f"unknown key (known: {', '.join(known)})")
        return value

    def sequence(self, value: Any, path: KeyPath) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"expected a list, got {_type_name(value)}")
        return value

    def substitute(self, value: Any, path: KeyPath) -> Any:
        """`${NAME}` and `${NAME:-default}` in strings, recursively, from the environment (or settings)."""
        if isinstance(value, str) and "${" in value:
            def env(match: re.Match[str]) -> str:
                variable = _VARIABLE.match(match["body"])
                if variable is None or not match["close"] or "${" in (variable["default"] or ""):
                    raise self.error(path, f"bad variable reference {match[0]!r}: write ${{NAME}} or "
                                           "${NAME:-default} (NAME: letters, digits and _; no nesting)")
                name, default = variable["name"], variable["default"]
                if name in _CREDENTIALS:
                    raise self.error(path, f"${{{name}}} is one of trainmon's own credentials: it would be "
                                           "sent with alerts; give the route its own variable")
                found = self.variable(name)
                if default is not None and not found:
                    return default
                if found is None:
                    raise self.error(path, f"environment variable {name} is not set "
                                           f"(write ${{{name}:-default}} to give it a default)")
                return found
            return _REFERENCE.sub(env, value)
        if isinstance(value, list):
            return [self.substitute(item, path + (index,)) for index, item in enumerate(value)]
        if isinstance(value, dict):
            return {key: self.substitute(item, path + (key,)) for key, item in value.items()}
        return value

    def variable(self, name: str) -> str | None:
        if name in SETTINGS_VARIABLES:
            if self._settings is None:
                from trainmon import settings as settings_module

                try:
                    self._settings = settings_module.load(environ=self.environ)
                except settings_module.SettingsError as exc:
                    raise PipelineConfigError(f"{self.name}: ${{{name}}} comes from the settings: {exc}") from None
            return SETTINGS_VARIABLES[name](self._settings)
        return self.environ.get(name)

    def text(self, value: Any, path: KeyPath, pattern: re.Pattern[str] | None = None, what: str = "a string") -> str:
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.match(value)):
            raise self.error(path, f"expected {what}, got {value!r}")
        return value

    def duration(self, value: Any, path: KeyPath, default: float, *, positive: bool = True) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value, positive=positive)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None

    def url(self, value: Any, path: KeyPath) -> str:
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(path, f"expected an http:// or https:// URL, got {value!r}")
        return value

    def strings(self, value: Any, path: KeyPath) -> dict[str, str]:
        """labels: label name -> string value."""
        result = self.mapping(value, path)
        for key, item in result.items():
            if not _LABEL.match(key):
                raise self.error(path + (key,), "label names are letters, digits and _ (not first a digit)")
            if not isinstance(item, str):
                raise self.error(path + (key,), f"expected a string (quote it), got {item!r}")
        return result

    def templates(self, value: Any, path: KeyPath) -> dict[str, str]:
        result = self.mapping(value, path)
        for key, item in result.items():
            if not isinstance(item, str):
                raise self.error(path + (key,), f"expected a string template, got {item!r}")
            try:
                list(string.Formatter().parse(item))
            except ValueError as exc:
                raise self.error(path + (key,), f"bad template ({exc}; write {{{{ and }}}} for braces)") from None
        return result

    # --- the sections ----------------------------------------------------------------------------

    def pipeline(self, data: Any) -> PipelineConfig:
        top = self.mapping(self.substitute(data, ()), (), _SECTIONS)
        alerting = self.mapping(top.get("alerting"), ("alerting",), _ALERTING_KEYS)
        dashboard = alerting.get("dashboard_url")
        rules = self.unique([self.rule(item, ("rules", i)) for i, item in
                             enumerate(self.sequence(top.get("rules"), ("rules",)))], "rules")
        repeat_s = self.duration(alerting.get("repeat_interval"), ("alerting", "repeat_interval"),
                                 DEFAULT_REPEAT_INTERVAL_S)
        return PipelineConfig(
            rules=rules,
            routes=self.unique([self.route(item, ("routes", i)) for i, item in
                                enumerate(self.sequence(top.get("routes"), ("routes",)))], "routes"),
            windows_s=self.windows(top.get("windows")),
            repeat_interval_s=repeat_s,
            dashboard_url=(DEFAULT_DASHBOARD_URL if dashboard is None
                           else self.url(dashboard, ("alerting", "dashboard_url"))).rstrip("/"),
            path=self.name,
            incidents=None if "incidents" not in top else self.incidents(top["incidents"], rules, repeat_s),
        )

    def incidents(self, value: Any, rules: list[RuleSpec], repeat_s: float) -> IncidentSpec:
        section = self.mapping(value, ("incidents",), _INCIDENT_KEYS)
        known = {spec.name for spec in rules} | set(_OWN_RULES)
        causes = []
        for i, item in enumerate(self.sequence(section.get("causes"), ("incidents", "causes"))):
            path = ("incidents", "causes", i)
            entry = self.mapping(item, path, _CAUSE_KEYS)
            for key in ("rule", "explains"):
                if key not in entry:
                    raise self.error(path, f"missing {key}")
            names = [entry["rule"], *self.sequence(entry["explains"], path + ("explains",))]
            for j, name in enumerate(names):
                where = path + (("rule",) if j == 0 else ("explains", j - 1))
                if name not in known:
                    raise self.error(where, f"no rule named {name!r} (rules: {', '.join(sorted(known))})")
            by = self.sequence(entry.get("by", list(KEYS)), path + ("by",))
            for j, key in enumerate(by):
                if key not in KEYS:
                    raise self.error(path + ("by", j), f"expected one of {', '.join(KEYS)}, got {key!r}")
            if not by:
                raise self.error(path + ("by",), f"expected at least one of {', '.join(KEYS)}")
            causes.append(Cause(names[0], frozenset(names[1:]), tuple(by)))
        return IncidentSpec(
            tuple(causes),
            group_wait_s=self.duration(section.get("group_wait"), ("incidents", "group_wait"), 2.0, positive=False),
            group_interval_s=self.duration(section.get("group_interval"), ("incidents", "group_interval"), 30.0),
            repeat_interval_s=repeat_s,
        )

    def windows(self, value: Any) -> list[float]:
        if value is None:
            return list(DEFAULT_WINDOWS_S)
        items = self.sequence(value, ("windows",))
        if not items:
            raise self.error(("windows",), "expected at least one window")
        seconds = [self.duration(item, ("windows", i), 0.0) for i, item in enumerate(items)]
        for i, x in enumerate(seconds):
            if x in seconds[:i]:
                raise self.error(("windows", i), f"duplicate window {items[i]!r}")
        return sorted(seconds)

    def unique(self, specs: list[Any], section: str) -> list[Any]:
        for i, spec in enumerate(specs):
            if any(other.name == spec.name for other in specs[:i]):
                raise self.error((section, i, "name"), f"duplicate name {spec.name!r}")
        return specs

    def rule(self, value: Any, path: KeyPath) -> RuleSpec:
        item = self.mapping(value, path, _RULE_KEYS)
        for key in ("name", "kind"):
            if key not in item:
                raise self.error(path, f"missing {key}")
        name = self.text(item["name"], path + ("name",), _NAME, "a name of letters, digits and _.:- (max 128)")
        kind = item["kind"]
        cls = RULE_KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise self.error(path + ("kind",), f"unknown rule kind {kind!r} (known: {', '.join(RULE_KINDS)})")
        severity = item.get("severity", getattr(cls, "default_severity", "warning"))
        if severity not in SEVERITIES:
            raise self.error(path + ("severity",), f"expected one of {', '.join(SEVERITIES)}, got {severity!r}")
        spec = RuleSpec(
            name=name, kind=kind, severity=severity,
            selector=self.mapping(item.get("selector"), path + ("selector",)),
            params=self.mapping(item.get("params"), path + ("params",)),
            for_s=self.duration(item.get("for"), path + ("for",), getattr(cls, "default_for_s", 0.0), positive=False),
            labels=self.strings(item.get("labels"), path + ("labels",)),
            annotations=self.templates(item.get("annotations"), path + ("annotations",)),
        )
        self.built(lambda: cls(spec), path, self._rule_key)
        return spec

    @staticmethod
    def _rule_key(key: str) -> KeyPath:
        """A rule class's error key (`patience`, `selector.metric`) as a path in the entry."""
        return ("selector", key.removeprefix("selector.")) if key.startswith("selector.") else ("params", key)

    def route(self, value: Any, path: KeyPath) -> RouteSpec:
        item = self.mapping(value, path, _ROUTE_KEYS)
        for key in ("name", "kind"):
            if key not in item:
                raise self.error(path, f"missing {key}")
        from trainmon.stream_processors.routes import ROUTE_KINDS, build_route  # late: the rules side needs none of it

        kind = item["kind"]
        if not isinstance(kind, str) or kind not in ROUTE_KINDS:
            raise self.error(path + ("kind",), f"unknown route kind {kind!r} (known: {', '.join(ROUTE_KINDS)})")
        retries = item.get("retries", 5)
        if type(retries) is not int or retries < 0:
            raise self.error(path + ("retries",), f"expected an integer >= 0, got {retries!r}")
        spec = RouteSpec(
            name=self.text(item["name"], path + ("name",), _NAME, "a name of letters, digits and _.:- (max 128)"),
            kind=kind,
            url="" if item.get("url") is None else self.url(item["url"], path + ("url",)),  # "": the kind's own
            match=self.mapping(item.get("match"), path + ("match",)),
            params=self.mapping(item.get("params"), path + ("params",)),
            timeout_s=self.duration(item.get("timeout_s"), path + ("timeout_s",), 5.0),
            retries=retries,
            backoff_s=self.duration(item.get("backoff_s"), path + ("backoff_s",), 0.5, positive=False),
        )
        self.built(lambda: build_route(spec), path, self._route_key)
        return spec

    @staticmethod
    def _route_key(key: str) -> KeyPath:
        """A route class's error key (`url`, `match.severity`, `routing_key`) as a path in the entry."""
        head, _, rest = key.partition(".")
        if head in _ROUTE_KEYS:
            return (head, rest) if rest else (head,)
        return ("params", key)

    def built(self, build: Callable[[], Any], path: KeyPath, where: Callable[[str], KeyPath]) -> None:
        """Let the kind's class check its own settings; its ValueError('<key>: <what>') points into the file."""
        try:
            build()
        except ValueError as exc:
            key, sep, message = str(exc).partition(": ")
            if not sep or " " in key:
                raise self.error(path, str(exc)) from None
            raise self.error(path + where(key), message) from None

