"""The training SDK behind `trainmon.init`: a `Run` per training process (per rank).

`run.log` is the hot path. It checks each entry with a type test and a set lookup, copies the dict
(the user may mutate theirs), builds one contract event and hands it to the publisher, which only
appends to a queue; encoding, spooling and Kafka happen on the publisher's thread. Nothing here
takes a lock or encodes JSON per call, and nothing raises into the training loop: bad input is
dropped with one `TrainmonWarning` per (name, reason); an internal failure is warned once and the
call returns. See docs/sdk.md.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import itertools
import logging
import math
import operator
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import trainmon
from trainmon.agent import checkpoint_pauses, environment, registry
from trainmon.agent.alert_follower import AlertFollower, Subscription
from trainmon.agent.identity import Identity, resolve, safe_id
from trainmon import TrainmonWarning
from trainmon.contract import MAX_EVENT_BYTES, MAX_NAME_LEN, MAX_TEXT_LEN, MAX_VALUES, RUN_STATUSES, SCHEMA_VERSION
from trainmon.contract import HEARTBEAT_S, SEVERITIES, ContractError, encode, envelope, phase_name

log = logging.getLogger("trainmon.sdk")

FLUSH_TIMEOUT_S = 5.0  # finish(): how long to wait for Kafka; what is left stays spooled for later
SIGTERM_FLUSH_S = 2.0  # well inside the usual 30 s between SIGTERM and SIGKILL (Slurm, Kubernetes)
MAX_SUMMARY_CHARS = 20_000
MAX_META_DEPTH = 32
MAX_NAMES_CACHED = 100_000  # validated metric names remembered; beyond, names are re-checked per call
SPOOL_ENV = "TRAINMON_SPOOL_DIR"
PROJECT_ENV = "TRAINMON_PROJECT"
_SDK_FILES = (__file__, trainmon.__file__)  # frames a warning skips to reach the user's line

_now = time.time


class _NullPublisher:
    """Stands in when the real publisher could not start: the run goes on, its events go nowhere."""

    assigns_seq = True  # nothing is sent: no need to number events

    @property
    def stats(self) -> dict[str, int]:
        return {}

    def publish(self, event: dict) -> bool:
        return False

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        pass


# --- warnings -----------------------------------------------------------------------------------


def _caller_stacklevel() -> int:
    """The stacklevel that points a warning at the user's line, past every SDK frame."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename in _SDK_FILES:
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str) -> None:
    """A TrainmonWarning at the user's line. Under -W error it is logged instead of raised: the SDK
    never raises into training."""
    try:
        warnings.warn(message, TrainmonWarning, stacklevel=_caller_stacklevel())
    except Exception:
        log.warning("trainmon: %s", message)


# --- values -------------------------------------------------------------------------------------


def name_problem(name: Any) -> str | None:
    """Why a metric name is refused (the contract's rule), or None."""
    if not isinstance(name, str):
        return f"name must be a str, got {type(name).__name__}"
    if not 0 < len(name) <= MAX_NAME_LEN:
        return f"name must be 1..{MAX_NAME_LEN} characters"
    if not name.isprintable() or name != name.strip():
        return "name must be printable, without leading or trailing whitespace"
    return None


def as_number(value: Any) -> float | int | str:
    """A metric value as int or float; numpy/torch/jax scalars and 0-dim arrays via their own
    conversion. A str return is the reason it is refused. NaN and infinities are data, kept."""
    if isinstance(value, bool) or "bool" in str(getattr(value, "dtype", "")):  # numpy bool_, torch.bool
        return "value is a bool"
    if value is None or isinstance(value, (str, bytes)):
        return f"value is {'None' if value is None else 'a ' + type(value).__name__}, not a number"
    shape = getattr(value, "shape", ())
    if shape:
        return f"value is an array of shape {tuple(shape)}, not a scalar"
    if getattr(getattr(value, "dtype", None), "kind", "") == "c" or isinstance(value, complex):
        return "value is complex"
    if isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", "") in ("i", "u"):
        try:
            return operator.index(value)
        except TypeError:
            pass
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return f"value is a {type(value).__name__}, not a number"


def jsonable(value: Any, depth: int = 0) -> Any:
    """Config, dataset and model facts as plain JSON: mappings, lists, str, int, finite float, bool,
    None. Namespaces and dataclasses become objects, numpy scalars numbers, non-finite floats and
    anything else their string form, so a config never fails to encode on the publisher's thread."""
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return value
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_META_DEPTH:
        return str(value)[:MAX_TEXT_LEN]
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, argparse.Namespace):
        return jsonable(vars(value), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth + 1)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item, depth + 1) for item in value]
    if isinstance(value, (bool, int, float, str)):  # IntEnum, StrEnum, float subclasses (numpy float64)
        return jsonable(_base(value), depth + 1)
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        return jsonable(value.item(), depth + 1)  # numpy / torch scalar
    return str(value)[:MAX_SUMMARY_CHARS]


def _base(value: int | float | str) -> int | float | str:
    for base in (int, float, str):
        if isinstance(value, base):
            return base(value)
    return value


def _text(value: Any) -> str | None:
    """An identifier for the contract (1..256 chars), or None."""
    if value is None:
        return None
    text = str(value).strip()[:MAX_TEXT_LEN]
    return text or None


def _status_of(exc: BaseException | None, uncaught: bool = False) -> str:
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "finished"
    if isinstance(exc, KeyboardInterrupt):
        return "killed"
    return "crashed" if uncaught else "failed"


def describe_model(model: Any) -> dict[str, Any]:
    """Parameter counts and a printed architecture of a torch.nn.Module-like object (has
    .parameters(), items with .numel() and .requires_grad) or a Keras-like one (.count_params()),
    without importing either framework."""
    info: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        total = trainable = 0
        for parameter in parameters():
            count = parameter.numel() if callable(getattr(parameter, "numel", None)) else parameter.size
            total += int(count)
            trainable += int(count) if getattr(parameter, "requires_grad", False) else 0
        info["parameters"], info["trainable_parameters"] = total, trainable
    elif callable(getattr(model, "count_params", None)):
        info["parameters"] = int(model.count_params())
    named_modules = getattr(model, "named_modules", None)
    if callable(named_modules):
        info["modules"] = sum(1 for _ in named_modules())
    summary = str(model)
    info["summary"] = summary[:MAX_SUMMARY_CHARS]
    if len(summary) > MAX_SUMMARY_CHARS:
        info["summary_truncated_from"] = len(summary)
    return info


# --- the run ------------------------------------------------------------------------------------


class Run:
    """One rank's view of a run. Create it with `trainmon.init`; see docs/sdk.md."""

    def __init__(self, identity: Identity, publisher: Any, *, owns_publisher: bool, name: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S, settings: Any = None) -> None:
        self.identity = identity
        self._settings = settings  # None: trainmon.settings.load(), when something needs them
        self.name = name
        self._publisher = publisher
        self._publish: Callable[[dict], Any] = publisher.publish
        self._owns_publisher = owns_publisher
        self._heartbeat_s = heartbeat_s
        self._pid = os.getpid()
        self._done = False  # finished, or inherited by a forked child: every call is ignored
        self._forked = False
        self._finish_lock = threading.RLock()  # RLock: a SIGTERM handler may interrupt finish() itself
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._registration: Path | None = None
        self._names: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self._next_step = 0
        self._step: int | None = None
        # What this rank does while not training (None: training). A plain attribute: the heartbeat
        # thread reads it without a lock (one reference assignment is atomic in CPython). The lock
        # only orders heartbeats, so the last one queued always carries the current phase.
        self._phase: str | None = None
        self._beat_lock = threading.Lock()
        # Alerts back into training: no follower (no consumer, no thread) until the first on_alert.
        # `log` only tests `_inbox` for truth: an empty tuple until then, the follower's deque after.
        self._follower: AlertFollower | None = None
        self._inbox: Any = ()
        self._subscriptions: tuple[Subscription, ...] = ()
        self._training_thread: int | None = None  # the thread of the first on_alert: callbacks run only there
        self._delivering = False
        self._stop_reason: Any = None
        # The envelope every event of this rank shares, unpacked once for the hot path.
        self._project, self._run, self._rank, self._host = identity.project, identity.run, identity.rank, identity.host
        # Who sent it: one producer id per run incarnation (128 random bits) and a seq counting this
        # run's events from 0. The real publisher numbers events with a `producer` on its own thread,
        # in queue order, before encoding; any other publisher gets them numbered here, under a lock
        # so that seq order is publish order even with several threads logging.
        self.producer = os.urandom(16).hex()
        if not getattr(publisher, "assigns_seq", False):
            self._seq = itertools.count()
            self._seq_lock = threading.Lock()
            self._publish = self._publish_numbered

    # identity, for the user's own logging
    @property
    def id(self) -> str:
        return self._run

    @property
    def project(self) -> str:
        return self._project

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self.identity.world_size

    @property
    def step(self) -> int | None:
        """The last logged step (None before the first log)."""
        return self._step

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def current_phase(self) -> str | None:
        """The phase set by `phase` / `pause`; None while training."""
        return self._phase

    def __repr__(self) -> str:
        return f"<trainmon.Run {self._project}/{self._run} rank {self._rank}/{self.identity.world_size}>"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> bool:
        self.finish(_status_of(exc))
        return False

    # --- the hot path ---------------------------------------------------------------------------

    def log(self, values: Mapping[str, Any], step: int | None = None, epoch: float | None = None) -> None:
        """Record training values for one step; returns at once (the publisher's thread sends).

        step None: the last step + 1 (0 at first). Bad entries are dropped with a warning; the rest
        are kept."""
        if self._done:
            self._ignored("log")
            return
        try:
            if type(values) is not dict:
                if not isinstance(values, Mapping):
                    self._warn_once("log", "values", f"run.log expects a dict of name -> number, "
                                                     f"got {type(values).__name__}: ignored")
                    return
                values = dict(values)
            names = self._names
            for name, value in values.items():
                kind = type(value)
                if (kind is not float and kind is not int) or name not in names:
                    values = self._checked(values)
                    break
            else:
                values = values.copy()
            if step is None:
                step = self._next_step
            elif type(step) is not int or step < 0:
                step = self._checked_step(step)
            if epoch is not None and (type(epoch) is not int and (type(epoch) is not float or epoch - epoch != 0.0)):
                epoch = self._checked_epoch(epoch)
            self._next_step = step + 1
            self._step = step
            if not values:
                return
            if len(values) > MAX_VALUES:
                self._log_split(values, step, epoch)
                return
            event = {"v": SCHEMA_VERSION, "kind": "metrics", "project": self._project, "run": self._run,
                     "rank": self._rank, "host": self._host, "time": _now(), "producer": self.producer,
                     "step": step, "values": values}
            if epoch is not None:
                event["epoch"] = epoch
            self._publish(event)
        except Exception as exc:  # a bug here must not stop training
            self._internal_error("log", exc)
        finally:  # the safe point: alerts read since the last call reach their callbacks, in this thread
            if self._inbox:
                self._deliver_alerts()

    def _publish_numbered(self, event: dict[str, Any]) -> Any:
        with self._seq_lock:
            event["seq"] = next(self._seq)
            return self._publisher.publish(event)

    def _checked(self, values: Mapping[Any, Any]) -> dict[str, float | int]:
        """The slow path: a copy with each bad entry dropped (and warned about once)."""
        names = self._names
        clean: dict[str, float | int] = {}
        for name, value in values.items():
            if name not in names:
                problem = name_problem(name)
                if problem:
                    self._warn_once(repr(name)[:60], problem, f"run.log dropped {repr(name)[:60]}: {problem}")
                    continue
                name = str(name)  # a str subclass (numpy.str_) as plain str
                if len(names) < MAX_NAMES_CACHED:
                    names.add(name)
            kind = type(value)
            if kind is float or kind is int:
                clean[name] = value
                continue
            number = as_number(value)
            if type(number) is str:
                self._warn_once(name, number, f"run.log dropped {name!r}: {number}")
                continue
            clean[name] = number
        return clean

    def _checked_step(self, step: Any) -> int:
        number = as_number(step)
        if type(number) is int and number >= 0:
            return number
        self._warn_once("step", "step", f"run.log step must be an int >= 0, got {step!r}: using {self._next_step}")
        return self._next_step

    def _checked_epoch(self, epoch: Any) -> float | int | None:
        number = as_number(epoch)
        if type(number) is not str and math.isfinite(number):
            return number
        self._warn_once("epoch", "epoch", f"run.log epoch must be a finite number, got {epoch!r}: left out")
        return None

    def _log_split(self, values: dict[str, float | int], step: int, epoch: float | int | None) -> None:
        """More names than one event may carry: several events of the same step, nothing dropped."""
        items = list(values.items())
        self._warn_once("log", "split", f"run.log got {len(items)} values, more than {MAX_VALUES} per event: "
                                        "sent as several events (costly; consider fewer names per call)")
        for start in range(0, len(items), MAX_VALUES):
            self._publish(envelope("metrics", project=self._project, run=self._run, rank=self._rank,
                                   host=self._host, time=_now(), producer=self.producer, step=step, epoch=epoch,
                                   values=dict(items[start:start + MAX_VALUES])))

    # --- metadata -------------------------------------------------------------------------------

    def _meta_here(self, all_ranks: Any) -> bool:
        """Run metadata is one fact per run: sent from rank 0 only, unless all_ranks=True."""
        return self._rank == 0 or all_ranks is True

    def log_config(self, config: Any = None, *, all_ranks: bool = False, **items: Any) -> None:
        """Add or change config / hyperparameters (merged key by key with the run's config).
        Sent from rank 0 only unless all_ranks=True (a config key named all_ranks: pass it in `config`)."""
        if self._done:
            self._ignored("log_config")
            return
        if not self._meta_here(all_ranks):
            return
        merged = _config(config, self._warn_once) or {}
        merged.update(jsonable(items))
        if merged:
            self._meta(config=merged)

    def log_dataset(self, name: str, version: Any, *, all_ranks: bool = False, **extra: Any) -> None:
        """Record a dataset and its version (a tag, hash or snapshot id); extra keys are kept.
        Sent from rank 0 only unless all_ranks=True (e.g. a per-rank shard)."""
        if self._done:
            self._ignored("log_dataset")
            return
        if not self._meta_here(all_ranks):
            return
        dataset_name, dataset_version = _text(name), _text(version)
        if dataset_name is None or dataset_version is None:
            self._warn_once("log_dataset", "name", "run.log_dataset needs a non-empty name and version: ignored")
            return
        self._meta(datasets=[{**jsonable(extra), "name": dataset_name, "version": dataset_version}])

    def log_model(self, model: Any = None, *, summary: str | None = None, parameters: int | None = None,
                  all_ranks: bool = False, **extra: Any) -> None:
        """Record the model: parameter counts and architecture from a torch/Keras-like object, or
        the explicit summary / parameter count; extra keys are kept. Sent from rank 0 only unless
        all_ranks=True."""
        if self._done:
            self._ignored("log_model")
            return
        if not self._meta_here(all_ranks):
            return
        info: dict[str, Any] = {}
        if model is not None:
            try:
                info.update(describe_model(model))
            except Exception as exc:
                self._warn_once("log_model", "model", f"run.log_model could not describe the model ({exc!r})")
        if summary is not None:
            info["summary"] = str(summary)[:MAX_SUMMARY_CHARS]
        if parameters is not None:
            count = as_number(parameters)
            if type(count) is int and count >= 0:
                info["parameters"] = count
            else:
                self._warn_once("log_model", "parameters", f"run.log_model parameters must be an int >= 0, "
                                                           f"got {parameters!r}: left out")
        info.update(jsonable(extra))
        if info:
            self._meta(model=info)

    def _meta(self, **fields: Any) -> None:
        try:
            self._publish(_bounded_size(self._envelope("run_meta", **fields), self._warn_once))
        except Exception as exc:
            self._internal_error("run_meta", exc)

    def _envelope(self, kind: str, **fields: Any) -> dict[str, Any]:
        return envelope(kind, project=self._project, run=self._run, rank=self._rank, host=self._host,
                        time=_now(), producer=self.producer, **fields)

    # --- expected pauses ------------------------------------------------------------------------

    def phase(self, name: str | None) -> Phase:
        """Say what this rank does now: "eval", "checkpoint", "data" ... (None or "train": training).

        The processors then expect a frozen step and late heartbeats instead of paging, up to their
        rules' pause limits. A heartbeat carrying the new phase is sent at once, so they know before
        the pause starts. Stays until changed; `with run.phase("eval"):` restores the previous
        phase on exit. A bad name warns once and changes nothing."""
        return self._change_phase(name, "phase")

    def pause(self, reason: str = "pause") -> Phase:
        """`phase(reason)`, for `with run.pause("checkpoint"): save(...)`."""
        return self._change_phase(reason, "pause")

    def _change_phase(self, name: Any, method: str) -> Phase:
        previous = self._phase
        if self._done:
            self._ignored(method)
            return Phase(self, previous, restore=False)
        try:
            if name is None or (type(name) is str and name == "train"):
                name = None  # training: the heartbeat leaves the field out
            else:
                try:
                    name = phase_name(name, "phase")  # the contract's rule, so no event is refused later
                except ContractError as exc:
                    self._warn_once(f"{method} {repr(name)[:60]}", "name",
                                    f"run.{method}({repr(name)[:60]}) ignored: {exc.detail}")
                    return Phase(self, previous, restore=False)
            self._set_phase(name)
        except Exception as exc:  # a bug here must not stop training
            self._internal_error(method, exc)
        return Phase(self, previous)

    def _set_phase(self, name: str | None) -> None:
        """Switch, and tell the processors at once (nothing to tell if it did not change)."""
        if self._done or name == self._phase:
            return
        self._phase = name
        self._send_heartbeat()

    # --- alerts back into training ----------------------------------------------------------------

    def on_alert(self, callback: Callable[[dict[str, Any]], Any], rules: str | Iterable[str] | None = None,
                 severity: str | None = None, *, resolved: bool = False) -> None:
        """Call `callback(alert)` in the training thread (the one that first calls on_alert), at its
        next `log`, when an alert of this run (or of this rank's host, naming no run) fires: `rules` a
        rule name or names (None: all), `severity` the least severity ("warning" takes "critical"
        too), `resolved` also its resolves. The first call starts following the alerts topic on a
        background thread; returns at once."""
        if self._done:
            self._ignored("on_alert")
            return
        try:
            subscription = self._subscription(callback, rules, severity, resolved)
            if subscription is None:
                return
            self._subscriptions += (subscription,)
            if self._training_thread is None:
                self._training_thread = threading.get_ident()
            self._follow_alerts()
        except Exception as exc:  # a bug here must not stop training
            self._internal_error("on_alert", exc)

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts of this run (and host) firing now, as the follower last read them; [] until a
        first `on_alert` or `alerts` call starts it (it follows from then on)."""
        if self._done:
            return []
        try:
            self._follow_alerts()
            return self._follower.firing()
        except Exception as exc:  # a bug here must not stop training
            self._internal_error("alerts", exc)
            return []

    def check_alerts(self) -> None:
        """A safe point without logging: the callbacks of alerts read since the last one run now (in
        the training thread). For framework hooks called every step while `log` is called less often."""
        if self._inbox:
            self._deliver_alerts()

    def request_stop(self, reason: Any = None) -> None:
        """Ask the training loop to stop: `stop_requested` turns True. Usable as an `on_alert`
        callback (the alert is the reason; a resolve is no reason to stop). The first reason stays."""
        if isinstance(reason, Mapping) and reason.get("state") == "resolved":
            return
        if self._stop_reason is None:
            self._stop_reason = True if reason is None else reason
            what = reason.get("rule") if isinstance(reason, Mapping) else reason
            log.warning("trainmon: run %s: stop requested (%s)", self._run, what or "no reason given")

    @property
    def stop_requested(self) -> bool:
        """True once `request_stop` was called: the loop (or a framework callback) should stop."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> Any:
        """What `request_stop` was given (an alert, usually); None while no stop is requested."""
        return self._stop_reason

    def _subscription(self, callback: Any, rules: Any, severity: Any, resolved: Any) -> Subscription | None:
        """on_alert's arguments checked (warned and ignored when wrong, like every SDK call)."""
        if not callable(callback):
            self._warn_once("on_alert", "callback",
                            f"run.on_alert needs a callable, got {type(callback).__name__}: ignored")
            return None
        if isinstance(rules, str):
            rules = (rules,)
        elif isinstance(rules, Iterable):
            rules = tuple(rules)  # once: a generator is read only once
        if rules is not None and (not isinstance(rules, tuple) or not all(isinstance(r, str) for r in rules)):
            self._warn_once("on_alert", "rules", "run.on_alert rules must be a rule name or a list of them: ignored")
            return None
        if severity is not None and severity not in SEVERITIES:
            self._warn_once("on_alert", "severity", f"run.on_alert severity must be one of {', '.join(SEVERITIES)}, "
                                                    f"got {severity!r}: ignored")
            return None
        return Subscription(callback, None if rules is None else frozenset(rules),
                            SEVERITIES.index(severity) if severity else 0, resolved is True)

    def _follow_alerts(self) -> None:
        if self._follower is None:
            follower = AlertFollower(self._settings, project=self._project, run=self._run, host=self._host)
            follower.start()
            self._follower, self._inbox = follower, follower.inbox

    def _deliver_alerts(self) -> None:
        """Each transition the follower read, in order, to every callback that wants it (a copy
        each). A callback that fails is warned about once and the others still run. Only in the
        training thread: a `log` from another (a metrics reporter, a data loader thread) is no safe point."""
        if self._delivering or threading.get_ident() != self._training_thread:
            return  # (delivering: a callback that logs; the outer call goes on with the rest)
        self._delivering = True
        try:
            inbox = self._inbox
            while inbox:
                alert = inbox.popleft()
                for subscription in self._subscriptions:
                    if subscription.wants(alert):
                        try:
                            subscription.callback(dict(alert))
                        except Exception as exc:
                            name = getattr(subscription.callback, "__qualname__", repr(subscription.callback))
                            self._warn_once(f"on_alert {name}", "callback", f"alert callback {name} failed on "
                                            f"{alert['rule']} (training goes on): {exc!r}")
        finally:
            self._delivering = False

    # --- lifecycle ------------------------------------------------------------------------------

    def _start(self, start_fields: dict[str, Any]) -> None:
        """Send run_start, register for the node daemon, start heartbeats (called once by init)."""
        try:
            self._publish(_bounded_size(self._envelope("run_start", **start_fields), self._warn_once))
        except Exception as exc:
            self._internal_error("run_start", exc)
        try:
            self._registration = registry.register({
                "project": self._project, "run": self._run, "rank": self._rank,
                "local_rank": self.identity.local_rank})
        except Exception as exc:
            log.warning("trainmon: not registered for the node daemon (%s): its samples will not name this run", exc)
        self._heartbeat = threading.Thread(target=self._beat, name=f"trainmon-heartbeat-{self._run}", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Every heartbeat_s: alive, and at which step. Sleeps in Event.wait, which releases the GIL."""
        wait = self._stop.wait
        while not wait(self._heartbeat_s):
            try:
                self._send_heartbeat()
            except Exception as exc:
                log.debug("heartbeat not sent: %s", exc)

    def _send_heartbeat(self) -> None:
        """One heartbeat: alive, at which step, in which phase (absent: training)."""
        dropped = getattr(self._publisher, "dropped", None)  # events lost so far, all causes
        with self._beat_lock:  # built and queued together: no older phase can follow a newer one
            self._publish(self._envelope("heartbeat", step=self._step, world_size=self.identity.world_size,
                                         dropped=dropped if type(dropped) is int else None, phase=self._phase))

    def finish(self, status: str = "finished", *, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """End this rank's run: send run_end, stop heartbeats, flush for at most timeout_s (what
        is not acknowledged by then stays in the spool for the next process). Idempotent."""
        if os.getpid() != self._pid:
            return  # a forked child must not end its parent's run
        with self._finish_lock:
            if self._done:
                return
            self._done = True
        _active.discard(self)
        if status not in RUN_STATUSES:
            warn(f"finish status must be one of {', '.join(RUN_STATUSES)}, got {status!r}: using 'finished'")
            status = "finished"
        self._stop.set()
        if self._follower is not None:
            self._follower.stop()
        try:
            self._publish(self._envelope("run_end", status=status, step=self._step))
        except Exception as exc:
            self._internal_error("finish", exc)
        try:
            if self._registration is not None:
                registry.unregister(self._registration, self._run)
            if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
                self._heartbeat.join(timeout=1.0)
            if self._owns_publisher:
                _bounded(lambda: self._publisher.close(timeout_s=timeout_s), timeout_s + 1.0)
            else:  # the caller's publisher: it may serve other runs, so flush only
                _bounded(lambda: self._publisher.flush(timeout_s=timeout_s), timeout_s + 1.0)
        except Exception as exc:
            self._internal_error("finish", exc)
        finally:
            _release_signal_handler()

    # --- warnings -------------------------------------------------------------------------------

    def _warn_once(self, subject: str, reason: str, message: str) -> None:
        if (subject, reason) not in self._warned:
            self._warned.add((subject, reason))
            warn(message)

    def _ignored(self, method: str) -> None:
        why = "in a forked child process (the parent's run)" if self._forked else "after finish()"
        self._warn_once(method, "finished", f"run.{method}() {why}: ignored")

    def _internal_error(self, where: str, exc: Exception) -> None:
        self._warn_once(where, "internal", f"internal error in {where} (ignored, training goes on): {exc!r}")


class Phase:
    """What `run.phase` / `run.pause` return. The phase is already set when it is made; used as a
    context manager, its exit puts back the phase that was current before the call (so nested
    pauses unwind in order), with a heartbeat at once if that changes it."""

    __slots__ = ("_run", "_previous", "_restore")

    def __init__(self, run: Run, previous: str | None, *, restore: bool = True) -> None:
        self._run, self._previous, self._restore = run, previous, restore

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> bool:
        if self._restore:  # an ignored call (bad name, after finish) has nothing to undo
            try:
                self._run._set_phase(self._previous)
            except Exception as error:  # never raise into training, nor hide the block's exception
                self._run._internal_error("phase", error)
        return False

    def __repr__(self) -> str:
        return f"<trainmon phase {self._run.current_phase or 'train'}>"


def _bounded(call: Callable[[], Any], timeout_s: float) -> None:
    """Run `call` for at most timeout_s: a publisher that hangs must not hang the process's exit."""
    worker = threading.Thread(target=call, name="trainmon-flush", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("trainmon: flush did not finish in %.0f s; the rest stays in the spool", timeout_s)


def _bounded_size(event: dict[str, Any], warn_once: Callable[[str, str, str], None]) -> dict[str, Any]:
    """A run_start / run_meta event that fits one Kafka message: oversized user parts are replaced
    by a note (the run goes on; the warning says what was left out)."""
    size = len(encode(event))
    if size <= MAX_EVENT_BYTES:
        return event
    for key in ("config", "model", "datasets", "environment"):
        if key in event:
            event[key] = {"_dropped": f"too large: the event was {size} bytes"} if key != "datasets" else None
    event = {key: value for key, value in event.items() if value is not None}
    warn_once(event["kind"], "size", f"{event['kind']} was {size} bytes, over {MAX_EVENT_BYTES}: "
                                     "config/model/datasets left out")
    return event


def _config(config: Any, warn_once: Callable[[str, str, str], None]) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, (Mapping, argparse.Namespace)) or (
            dataclasses.is_dataclass(config) and not isinstance(config, type)):
        return jsonable(config)
    warn_once("config", "type", f"config must be a dict, argparse.Namespace or dataclass, "
                                f"got {type(config).__name__}: left out")
    return None


def _tags(tags: Any, warn_once: Callable[[str, str, str], None]) -> list[str] | None:
    if tags is None:
        return None
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, Iterable):
        warn_once("tags", "type", f"tags must be a list of str, got {type(tags).__name__}: left out")
        return None
    cleaned = [tag for tag in (_text(tag) for tag in tags) if tag]
    return cleaned or None


# --- process-wide hooks: exit, SIGTERM, fork ------------------------------------------------------

_active: set[Run] = set()
_init_count = 0
_hooks_lock = threading.Lock()
_hooks_installed = False
_sigterm_installed = False
_uncaught: BaseException | None = None


def _at_exit() -> None:
    """Interpreter exit with runs still open: crashed if an exception ended the program."""
    status = _status_of(_uncaught, uncaught=True)
    for run in list(_active):
        run.finish(status)


def _excepthook(previous: Callable[..., Any]) -> Callable[..., Any]:
    def hook(kind: type[BaseException], value: BaseException, traceback: Any) -> Any:
        global _uncaught
        _uncaught = value  # atexit runs after this: it marks the open runs "crashed"
        return previous(kind, value, traceback)

    return hook


def _on_sigterm(signum: int, frame: Any) -> None:
    """finish("killed") with a short flush, then die of SIGTERM as the default action would."""
    for run in list(_active):
        run.finish("killed", timeout_s=SIGTERM_FLUSH_S)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _release_signal_handler() -> None:
    """With no run open, give SIGTERM its default back (a Python handler waits for the main thread)."""
    global _sigterm_installed
    if _sigterm_installed and not _active and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_installed = False


def _after_fork_in_child() -> None:
    """The child (e.g. a DataLoader worker) has no publisher thread: its copies of runs go quiet."""
    for run in _active:
        run._done = run._forked = True
    _active.clear()


def _install_hooks() -> None:
    global _hooks_installed, _sigterm_installed
    with _hooks_lock:
        # Re-registered at every init: atexit runs last-registered first, so this runs before the
        # exit hook of any publisher created since, while it can still send run_end.
        atexit.unregister(_at_exit)
        atexit.register(_at_exit)
        if not _hooks_installed:
            _hooks_installed = True
            sys.excepthook = _excepthook(sys.excepthook)
            os.register_at_fork(after_in_child=_after_fork_in_child)
        if (not _sigterm_installed and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True


# --- init -----------------------------------------------------------------------------------------


SHARED_SPOOL_ROOT = Path("/var/spool/trainmon")  # made by deploy/systemd/tmpfiles.d/trainmon.conf


def spool_root(environ: Mapping[str, str] | None = None) -> Path:
    """$TRAINMON_SPOOL_DIR; else the node's shared root, where the node agent replays what a dead
    process left (if the administrator made it and we may write there); else ~/.cache/trainmon/spool."""
    environ = os.environ if environ is None else environ
    if environ.get(SPOOL_ENV):
        return Path(environ[SPOOL_ENV]).expanduser()
    if SHARED_SPOOL_ROOT.is_dir() and os.access(SHARED_SPOOL_ROOT, os.W_OK | os.X_OK):
        return SHARED_SPOOL_ROOT
    return Path.home() / ".cache" / "trainmon" / "spool"


def _default_publisher(settings: Any, identity: Identity, spool_dir: str | os.PathLike[str] | None) -> Any:
    from trainmon.agent.publisher import Publisher  # confluent_kafka loads here, never at `import trainmon`
    from trainmon.settings import load

    root = Path(spool_dir).expanduser() if spool_dir is not None else spool_root()
    directory = root / f"{safe_id(identity.project)}-{safe_id(identity.run)}-rank{identity.rank}"
    return Publisher(settings or load(), spool_dir=directory,
                     client_id=f"trainmon-sdk-{safe_id(identity.run)[:100]}-rank{identity.rank}")


def _start_fields(run: Run, config: Any, tags: Any) -> dict[str, Any]:
    """run_start beyond the envelope: who, what config, which code, on what machine."""
    identity = run.identity
    launch = {"launcher": identity.launcher, "run_id_source": identity.run_id_source,
              "node_rank": identity.node_rank, "master_addr": os.environ.get("MASTER_ADDR"),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    fields: dict[str, Any] = {"name": run.name, "world_size": identity.world_size, "local_rank": identity.local_rank,
                              "pid": os.getpid()}  # as registered: the daemon's samples list it while it lives
    for key, probe in (
        ("user", lambda: _text(environment.user())),
        ("config", lambda: _config(config, run._warn_once)),
        ("tags", lambda: _tags(tags, run._warn_once)),
        ("code", lambda: environment.code_version(sys.argv)),
        ("environment", lambda: environment.environment({k: v for k, v in launch.items() if v is not None})),
    ):
        fields[key] = environment.guarded(probe, key)
    return fields


def init(project: str | None = None, name: str | None = None, config: Any = None, tags: Iterable[str] | None = None,
         *, run_id: str | None = None, rank: int | None = None, world_size: int | None = None,
         local_rank: int | None = None, settings: Any = None, heartbeat_s: float = HEARTBEAT_S,
         spool_dir: str | os.PathLike[str] | None = None, publisher: Any = None) -> Run:
    """Start this process's run (see trainmon.init). Never raises: a problem is warned about and
    the run goes on, without monitoring if the publisher cannot start."""
    global _init_count
    with _hooks_lock:
        _init_count += 1
        sequence = _init_count
    project_name = _text(project) or _text(os.environ.get(PROJECT_ENV)) or "default"
    run_name = _text(name)
    identity = resolve(os.environ, project_name, run_name, run_id_arg=run_id, rank=rank,
                       local_rank=local_rank, world_size=world_size, sequence=sequence)
    for note in identity.notes:
        warn(note)
    if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, (int, float)) or not heartbeat_s > 0:
        warn(f"heartbeat_s must be a number > 0, got {heartbeat_s!r}: using {HEARTBEAT_S:g}")
        heartbeat_s = HEARTBEAT_S

    owns = publisher is None
    if owns:
        try:
            publisher = _default_publisher(settings, identity, spool_dir)
        except Exception as exc:
            warn(f"monitoring is off for this run: the publisher did not start ({exc}); training goes on")
            publisher = _NullPublisher()
    run = Run(identity, publisher, owns_publisher=owns, name=run_name, heartbeat_s=float(heartbeat_s),
              settings=settings)

    try:
        run._start(_start_fields(run, config, tags))
        _active.add(run)
        _install_hooks()
        for name in checkpoint_pauses.install(lambda: _active):
            log.info("trainmon: %s runs inside run.pause(%r) (%s=0 turns it off)", name, checkpoint_pauses.PHASE,
                     checkpoint_pauses.ENV)
    except Exception as exc:
        run._internal_error("init", exc)
    log.info("trainmon: run %s (project %s, rank %d/%d, run id from %s)", identity.run, identity.project,
             identity.rank, identity.world_size, identity.run_id_source)
    return run
