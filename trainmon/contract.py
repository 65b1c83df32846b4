"""The event contract v1: what agents put on Kafka and processors accept. See docs/events.md.

Wire format: one UTF-8 JSON object per Kafka message, standard JSON only. Non-finite training values
travel as the strings "NaN", "Infinity" and "-Infinity" (JSON has no such numbers) and decode back to
floats, because a NaN loss is data an alert rule needs. Decoding is strict on every field it knows and
ignores fields it does not (a newer minor producer may add some); anything wrong raises ContractError
with a machine-readable reason, which the processors put on the dead-letter topic.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any, Callable, Iterable, Mapping

from trainmon.errors import TrainmonError

try:  # a dependency of the SDK and the processors; without it both work, slower
    import orjson
except ImportError:  # tests/unit/test_contract.py runs every case both ways
    orjson = None

SCHEMA_VERSION = 1
KNOWN_VERSIONS = frozenset({1})
MAX_EVENT_BYTES = 1_000_000  # under Kafka's default message.max.bytes (1 MiB)
MAX_VALUES = 4096  # name -> value pairs in one metrics event or one sample section
MAX_NAME_LEN = 128
MAX_TEXT_LEN = 256  # identifiers: project, run, host, rule, label values ...
MAX_PHASE_LEN = 32
MAX_GPUS = 64
# Integers are bounded by the ClickHouse columns that hold them (step, offsets, bytes: Int64-safe;
# rank, world size, pid: UInt32; GPU index: Int16), so a valid event can always be written.
MAX_COUNT = 2**63 - 1
MAX_RANK = 2**32 - 1
MAX_GPU_INDEX = 2**15 - 1
EXACT_INT = 2**53  # larger integer values are converted to the nearest float (values are Float64)


# --- topics and keys: part of the contract -----------------------------------------------------


class Topic(StrEnum):
    """Logical topics; the Kafka name is `<prefix><value>` (prefix from settings)."""

    METRICS = "metrics"  # kind metrics, key = run id
    RUNS = "runs"  # kinds run_start, run_meta, heartbeat, run_end, key = run id
    SYSTEM = "system"  # kind system, key = host
    ALERTS = "alerts"  # kind alert, key = fingerprint
    DEADLETTER = "deadletter"  # undecodable input, original bytes, reason in headers

HEARTBEAT_S = 1.0  # the SDK's default heartbeat cadence; the liveness rule learns each rank's own

TOPIC_OF_KIND = {
    "metrics": Topic.METRICS,
    "run_start": Topic.RUNS,
    "run_meta": Topic.RUNS,
    "heartbeat": Topic.RUNS,
    "run_end": Topic.RUNS,
    "system": Topic.SYSTEM,
    "alert": Topic.ALERTS,
}

# Dead-letter headers; the message value is the original bytes, untouched.
DLQ_REASON, DLQ_DETAIL = "trainmon-dlq-reason", "trainmon-dlq-detail"
DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET = "trainmon-dlq-topic", "trainmon-dlq-partition", "trainmon-dlq-offset"


def topic_name(topic: Topic, prefix: str) -> str:
    return f"{prefix}{topic.value}"


def check_topic(event: Mapping[str, Any], topic: Topic) -> None:
    """A kind's events on its own topic only: a partition then holds one kind's rows, so the offset
    watermark an insert moves covers all of them, and the key that placed them (run or host) is the
    one their state is kept under."""
    own = TOPIC_OF_KIND[event["kind"]]
    if own is not topic:
        raise ContractError(Reason.WRONG_TOPIC, f"a {event['kind']} event belongs on the {own.value} topic, "
                            f"not {topic.value}", "kind")


def partition_key(event: Mapping[str, Any]) -> bytes:
    """Metrics and run events by run (one run's ranks share a partition: in-order, co-partitioned),
    system samples by host, alerts by fingerprint."""
    kind = event["kind"]
    if kind == "system":
        return event["host"].encode()
    if kind == "alert":
        return event["fingerprint"].encode()
    return event["run"].encode()


# --- errors -------------------------------------------------------------------------------------


class Reason(StrEnum):
    OVERSIZED = "oversized"
    MALFORMED = "malformed"  # not UTF-8, not JSON, or not a JSON object
    UNKNOWN_VERSION = "unknown_version"
    UNKNOWN_KIND = "unknown_kind"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"  # NaN/Inf where only finite numbers are allowed
    INVALID_VALUE = "invalid_value"  # right type, out of range or bad format
    WRONG_TOPIC = "wrong_topic"  # a valid event on a topic that is not its kind's


class ContractError(TrainmonError, ValueError):
    def __init__(self, reason: Reason, detail: str, field: str = "") -> None:
        self.reason, self.detail, self.field = reason, detail, field
        super().__init__(f"{reason.value}: {field + ': ' if field else ''}{detail}")


# --- field checks: each takes (value, field path) and returns the normalised value --------------

Check = Callable[[Any, str], Any]
_NON_FINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(field: str, expected: str, value: Any) -> ContractError:
    return ContractError(Reason.WRONG_TYPE, f"expected {expected}, got {_type_name(value)}", field)


def text(value: Any, field: str) -> str:
    if type(value) is not str:
        raise _wrong(field, "string", value)
    if not value or len(value) > MAX_TEXT_LEN:
        raise ContractError(Reason.INVALID_VALUE, f"length must be 1..{MAX_TEXT_LEN}", field)
    return value


_PHASE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def phase_name(value: Any, field: str) -> str:
    """What a rank does while not training ("eval", "checkpoint"): short and lowercase, so the
    processors and their rules can match it exactly."""
    if type(value) is not str:
        raise _wrong(field, "string", value)
    if not 0 < len(value) <= MAX_PHASE_LEN or not _PHASE_CHARS.issuperset(value):
        raise ContractError(Reason.INVALID_VALUE, f"must be 1..{MAX_PHASE_LEN} of a-z 0-9 _ -, "
                                                  f"got {value[:40]!r}", field)
    return value


def bounded(maximum: int) -> Check:
    def check(value: Any, field: str) -> int:
        if type(value) is not int:
            raise _wrong(field, "integer", value)
        if not 0 <= value <= maximum:
            raise ContractError(Reason.INVALID_VALUE, f"must be 0..{maximum}", field)
        return value

    return check


count = bounded(MAX_COUNT)
rank_number = bounded(MAX_RANK)
gpu_index = bounded(MAX_GPU_INDEX)


def finite(value: Any, field: str) -> float | int:
    t = type(value)
    if t is float:
        if value - value != 0.0:  # nan or inf, without a function call
            raise ContractError(Reason.NON_FINITE, "must be a finite number", field)
        return value
    if t is int:
        return value if -EXACT_INT <= value <= EXACT_INT else _as_float(value, field)
    if t is str and value in _NON_FINITE_IN:
        raise ContractError(Reason.NON_FINITE, "must be a finite number", field)
    raise _wrong(field, "number", value)


def _as_float(value: int, field: str) -> float:
    """An integer past 2**53 as the nearest float; past the float range it is no number we can store."""
    try:
        return float(value)
    except OverflowError:
        raise ContractError(Reason.INVALID_VALUE, "integer beyond the float range", field) from None


def timestamp(value: Any, field: str) -> float:
    number = finite(value, field)
    if not 0 < number < 32503680000:  # (1970, 3000): seconds, not ms or ns
        raise ContractError(Reason.INVALID_VALUE, "must be Unix time in seconds", field)
    return float(number)


def obj(value: Any, field: str) -> dict:
    if type(value) is not dict:
        raise _wrong(field, "object", value)
    return value


def labels(value: Any, field: str) -> dict[str, str]:
    for key, item in obj(value, field).items():
        if type(item) is not str:
            raise _wrong(f"{field}.{key}", "string", item)
    return value


def texts(value: Any, field: str) -> list[str]:
    if type(value) is not list:
        raise _wrong(field, "array", value)
    for index, item in enumerate(value):
        text(item, f"{field}[{index}]")
    return value


def one_of(*allowed: str) -> Check:
    def check(value: Any, field: str) -> str:
        if value not in allowed:
            raise ContractError(Reason.INVALID_VALUE, f"must be one of {', '.join(allowed)}", field)
        return value

    return check


def optional(check: Check) -> Check:
    def maybe(value: Any, field: str) -> Any:
        return None if value is None else check(value, field)

    return maybe


_names_seen: set[str] = set()  # names repeat on every event: check each spelling once


def _name(key: str, field: str) -> None:
    if key in _names_seen:
        return
    if not key or len(key) > MAX_NAME_LEN or not key.isprintable() or key != key.strip():
        raise ContractError(Reason.INVALID_VALUE, f"bad name {key[:40]!r}: 1..{MAX_NAME_LEN} printable chars", field)
    if len(_names_seen) < 100_000:
        _names_seen.add(key)


_FLOATS = {float}


def _summed_finite(values: Mapping[str, Any]) -> bool:
    """Every value a finite number, as one sum in C says (a NaN or an infinity makes the sum
    non-finite); False also for a sum that overflowed or a value that is no number, which the caller's
    per-value loop then judges."""
    try:
        total = sum(values.values())
    except (TypeError, OverflowError):
        return False
    return total - total == 0.0


def _usual_values(value: dict) -> bool:
    """The usual map, checked in C: known names, only floats, and a finite sum (a NaN or an infinity
    would make it non-finite). Anything else, or an overflowing sum, takes _value_map's loop."""
    return value.keys() <= _names_seen and set(map(type, value.values())) <= _FLOATS and _summed_finite(value)


def _value_map(value: Any, field: str, allow_non_finite: bool) -> dict[str, float | int]:
    if type(value) is not dict:
        raise _wrong(field, "object", value)
    if len(value) > MAX_VALUES:
        raise ContractError(Reason.INVALID_VALUE, f"more than {MAX_VALUES} values", field)
    if _usual_values(value):
        return value
    converted: dict[str, float] | None = None
    for key, item in value.items():
        if key not in _names_seen:
            _name(key, field)
        t = type(item)
        if t is float:
            if item - item != 0.0:
                raise ContractError(Reason.NON_FINITE, "must be a finite number", f"{field}.{key}")
        elif t is int:
            if not -EXACT_INT <= item <= EXACT_INT:
                converted = converted or {}
                converted[key] = _as_float(item, f"{field}.{key}")
        else:
            if allow_non_finite and t is str and item in _NON_FINITE_IN:
                converted = converted or {}
                converted[key] = _NON_FINITE_IN[item]
            elif t is str and item in _NON_FINITE_IN:
                raise ContractError(Reason.NON_FINITE, "must be a finite number", f"{field}.{key}")
            else:
                raise _wrong(f"{field}.{key}", "number", item)
    if converted:
        value.update(converted)
    return value


def training_values(value: Any, field: str) -> dict[str, float | int]:
    return _value_map(value, field, allow_non_finite=True)


def figures(value: Any, field: str) -> dict[str, float | int]:
    return _value_map(value, field, allow_non_finite=False)


def _records(spec: Mapping[str, tuple[Check, bool]], limit: int) -> Check:
    def check(value: Any, field: str) -> list[dict]:
        if type(value) is not list:
            raise _wrong(field, "array", value)
        if len(value) > limit:
            raise ContractError(Reason.INVALID_VALUE, f"more than {limit} entries", field)
        for index, item in enumerate(value):
            _apply(spec, obj(item, f"{field}[{index}]"), f"{field}[{index}].")
        return value

    return check


def _apply(spec: Mapping[str, tuple[Check, bool]], event: dict, prefix: str = "") -> None:
    for key, (check, required) in spec.items():
        value = event.get(key)
        if value is None:
            if required:
                raise ContractError(Reason.MISSING_FIELD, "required", prefix + key)
            continue
        event[key] = check(value, prefix + key)


# --- the kinds ------------------------------------------------------------------------------------

RUN_STATUSES = ("finished", "failed", "killed", "crashed")
SEVERITIES = ("info", "warning", "critical")

_RUN_IDENTITY = {
    "project": (text, True),
    "run": (text, True),
    "rank": (rank_number, True),
    "host": (text, True),
    "time": (timestamp, True),
    # Who sent it: one id per SDK process incarnation and a per-process sequence number, so a
    # re-sent event (spool replay after a crash) is recognised whatever its Kafka offset.
    "producer": (optional(text), False),
    "seq": (optional(count), False),
}
_RUN_META = {
    "config": (obj, False),  # hyperparameters and any nested config
    "tags": (texts, False),
    "datasets": (_records({"name": (text, True), "version": (text, True)}, 256), False),
    "model": (obj, False),  # architecture summary, parameter counts
}
_PROCESS = {"pid": (rank_number, True), "run": (optional(text), False), "figures": (figures, True)}
_GPU = {
    "index": (gpu_index, True),
    "uuid": (text, True),
    "name": (optional(text), False),
    "figures": (figures, True),  # util_percent, mem_used_bytes, temperature_c, power_w, ...
    "processes": (_records({"pid": (rank_number, True), "mem_used_bytes": (count, True)}, 1024), False),
    "error": (optional(text), False),  # NVML failed for this GPU (e.g. fallen off the bus)
}

SPECS: dict[str, dict[str, tuple[Check, bool]]] = {
    "metrics": {
        **_RUN_IDENTITY,
        "step": (count, True),
        "epoch": (optional(finite), False),
        "values": (training_values, True),
    },
    "run_start": {
        **_RUN_IDENTITY,
        "name": (optional(text), False),
        "world_size": (rank_number, True),
        "local_rank": (optional(rank_number), False),
        # the rank's process id, as the node daemon lists it: a rank whose process is gone is dead
        "pid": (optional(rank_number), False),
        "user": (optional(text), False),
        **_RUN_META,
        "code": (obj, False),  # git commit, dirty flag, command line
        "environment": (obj, False),  # python, packages, CPU/GPU model, driver, CUDA
    },
    "run_meta": {**_RUN_IDENTITY, **_RUN_META},
    "heartbeat": {**_RUN_IDENTITY, "step": (optional(count), False),
                  "world_size": (optional(rank_number), False), "dropped": (optional(count), False),
                  # not training ("eval", "checkpoint"): a frozen step and late beats are expected
                  "phase": (optional(phase_name), False)},
    "run_end": {**_RUN_IDENTITY, "status": (one_of(*RUN_STATUSES), True), "step": (optional(count), False)},
    "system": {
        "host": (text, True),
        "time": (timestamp, True),
        "interval_s": (optional(finite), False),
        "runs": (texts, False),  # runs active on this node
        "figures": (figures, True),  # cpu_percent, mem_used_bytes, net_rx_bytes_per_s, ...
        "processes": (_records(_PROCESS, 1024), False),  # training processes: cpu_percent, rss_bytes
        "gpus": (_records(_GPU, MAX_GPUS), False),
    },
    "alert": {
        "rule": (text, True),
        "fingerprint": (text, True),
        "state": (one_of("firing", "resolved"), True),
        "severity": (one_of(*SEVERITIES), True),
        "labels": (labels, True),
        "annotations": (labels, False),
        "values": (figures, False),
        "starts_at": (timestamp, True),
        "ends_at": (optional(timestamp), False),
        "time": (timestamp, True),
        "project": (optional(text), False),
        "run": (optional(text), False),
    },
}


def _no_constants(token: str) -> None:
    raise ContractError(Reason.MALFORMED, f"{token} is not standard JSON (send it as the string {token!r})")


_decoder = json.JSONDecoder(parse_constant=_no_constants)
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _is_text(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_TEXT_LEN


def _usual_metrics(event: dict) -> bool:
    """Whether a metrics event is valid exactly as it is, in straight-line code: the processors' most
    frequent event, for which the spec walk below took most of decode() (3.9 of 5.5 us per event).
    True only where that walk would accept the event and change nothing in it (every number already a
    float or an in-range int, no non-finite value); anything else, valid or not, takes the walk, which
    converts what needs converting and names the reason for a refusal."""
    get = event.get
    rank, step, when, epoch, values = get("rank"), get("step"), get("time"), get("epoch"), get("values")
    producer, seq = get("producer"), get("seq")
    return (_is_text(get("project")) and _is_text(get("run")) and _is_text(get("host"))
            and type(rank) is int and 0 <= rank <= MAX_RANK and type(step) is int and 0 <= step <= MAX_COUNT
            and type(when) is float and 0 < when < 32503680000
            and (epoch is None or type(epoch) is float and epoch - epoch == 0.0)
            and (producer is None or _is_text(producer))
            and (seq is None or type(seq) is int and 0 <= seq <= MAX_COUNT)
            and type(values) is dict and len(values) <= MAX_VALUES and _usual_values(values))


def validate(event: Any) -> dict:
    """Check an already-parsed event in place; returns it with non-finite strings as floats."""
    if type(event) is not dict:
        raise ContractError(Reason.MALFORMED, f"expected a JSON object, got {_type_name(event)}")
    version = event.get("v")
    if version not in KNOWN_VERSIONS or type(version) is not int:
        if version is None:
            raise ContractError(Reason.MISSING_FIELD, "required", "v")
        raise ContractError(Reason.UNKNOWN_VERSION, f"schema version {version!r} not in {sorted(KNOWN_VERSIONS)}", "v")
    kind = event.get("kind")
    if kind == "metrics" and _usual_metrics(event):
        return event
    spec = SPECS.get(kind)  # type: ignore[arg-type]
    if spec is None:
        if "kind" not in event:
            raise ContractError(Reason.MISSING_FIELD, "required", "kind")
        raise ContractError(Reason.UNKNOWN_KIND, f"{str(event['kind'])[:40]!r} is not one of {', '.join(SPECS)}", "kind")
    _apply(spec, event)
    return event


# The kinds that are most of the traffic, parsed by orjson (4-5x faster than the json module) when it
# is installed. Its result can differ from the json module's only where an integer literal lies
# outside [-2**63, 2**64): orjson makes it the nearest float. In these kinds a number field (values,
# epoch) turns such an integer into that float anyway, an integer field refuses the float, and a
# refusal is decoded again by the json module, so accepted events and refusal reasons are the same;
# fields the contract does not know are not kept for these kinds. Rare kinds (free-form configs,
# whose integers must stay exact) always take the json module.
_FAST_KINDS = frozenset({"metrics", "system"})


def decode(raw: bytes | bytearray | memoryview) -> dict:
    """Bytes from Kafka to a validated event dict, or ContractError naming the reason."""
    if len(raw) > MAX_EVENT_BYTES:
        raise ContractError(Reason.OVERSIZED, f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    if orjson is not None:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:  # NaN literals, lone surrogates, huge floats...: the json module says why
            pass
        else:
            if type(event) is dict and event.get("kind") in _FAST_KINDS:
                try:
                    return validate(event)
                except ContractError:
                    pass  # the reason as the json module's parse gives it (an integer past 2**64, say)
    try:
        event = _decoder.decode(bytes(raw).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ContractError(Reason.MALFORMED, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ContractError(Reason.MALFORMED, f"not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ContractError(Reason.MALFORMED, "nested too deeply") from None
    except ValueError as exc:  # an integer literal past Python's digit limit, and the like
        raise ContractError(Reason.MALFORMED, f"not decodable ({str(exc)[:120]})") from None
    return validate(event)


def _wire_value(x: float | int) -> float | int | str:
    if x - x == 0.0:
        return x
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def encode(event: Mapping[str, Any]) -> bytes:
    """An event dict to wire bytes; non-finite training values become their string names.

    Producers build events from the typed helpers below or the SDK; encode() does not re-validate
    (the hot path validates once, at the consumer), but refuses what JSON cannot carry. orjson writes
    the usual event 7-8x faster than the json module (bench/codec.py; the agent's publisher thread was
    encode-bound). What it writes differently (an exponent as 1e16, not 1e+16) decodes to the same
    event; what it cannot write, or writes as null, the json module writes.
    """
    values = event.get("values")
    if values and event.get("kind") == "metrics" and not _summed_finite(values):
        for x in values.values():
            if type(x) is float and x - x != 0.0:
                event = {**event, "values": {k: _wire_value(v) for k, v in values.items()}}
                break
    if orjson is not None:
        try:
            raw = orjson.dumps(event)
        except TypeError:  # JSONEncodeError: an integer past 64 bits, a key not a str, a type it lacks
            pass
        else:
            # orjson writes NaN and the infinities as null, where the json module refuses them: any
            # null (also a None, or "null" inside a string) goes the json module's way instead.
            if b"null" not in raw:
                return raw
    try:
        return _encoder.encode(event).encode()
    except ValueError as exc:
        raise ContractError(Reason.NON_FINITE, f"cannot encode: {exc}") from None
    except TypeError as exc:
        raise ContractError(Reason.WRONG_TYPE, f"cannot encode: {exc}") from None


# --- typed constructors: the shape of each kind in one place -------------------------------------


def envelope(kind: str, **fields: Any) -> dict[str, Any]:
    """An event of `kind` with the current schema version; fields left None are omitted."""
    if kind not in SPECS:
        raise ContractError(Reason.UNKNOWN_KIND, f"{kind!r} is not one of {', '.join(SPECS)}", "kind")
    event = {"v": SCHEMA_VERSION, "kind": kind}
    event.update((k, v) for k, v in fields.items() if v is not None)
    return event


def known_kinds() -> Iterable[str]:
    return SPECS.keys()
