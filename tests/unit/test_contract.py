"""The event contract: valid events round-trip, each kind of bad input gets its typed reason."""

from __future__ import annotations

import json
import math
import random

import orjson
import pytest

from trainmon import contract
from trainmon.contract import (
    MAX_EVENT_BYTES,
    MAX_VALUES,
    SCHEMA_VERSION,
    ContractError,
    Reason,
    Topic,
    TOPIC_OF_KIND,
    decode,
    encode,
    envelope,
    partition_key,
    topic_name,
)

T = 1_764_230_400.25


@pytest.fixture(autouse=True, params=["orjson", "json"])
def parser(request, monkeypatch):
    """Every test with both parsers: orjson (the processors' extra) and the json module (the SDK alone)."""
    if request.param == "json":
        monkeypatch.setattr(contract, "orjson", None)
    return request.param


def with_json_module(raw: bytes):
    """decode() as the SDK without orjson runs it: the reference the orjson path must match."""
    saved, contract.orjson = contract.orjson, None
    try:
        return decode(raw)
    except ContractError as error:
        return (error.reason, error.field, str(error))
    finally:
        contract.orjson = saved


def decoded(raw: bytes):
    try:
        return decode(raw)
    except ContractError as error:
        return (error.reason, error.field, str(error))


def metrics(**overrides):
    event = envelope("metrics", project="p", run="r1", rank=0, host="node-1", step=10, epoch=1,
                     time=T, values={"loss": 0.5, "lr": 3e-4, "step_time_s": 1})
    event.update(overrides)
    return event


def system():
    return envelope(
        "system", host="node-1", time=T, interval_s=1.0, runs=["r1"],
        figures={"cpu_percent": 12.5, "mem_used_bytes": 2**34},
        processes=[{"pid": 42, "run": "r1", "figures": {"cpu_percent": 99.0, "rss_bytes": 2**30}}],
        gpus=[
            {"index": i, "uuid": f"GPU-{i}", "name": "H100", "processes": [{"pid": 42, "mem_used_bytes": 2**33}],
             "figures": {"util_percent": 97.0, "mem_used_bytes": 70 * 2**30, "temperature_c": 71, "power_w": 650.5}}
            for i in range(8)
        ],
    )


VALID = {
    "metrics": metrics(),
    "system": system(),
    "run_start": envelope("run_start", project="p", run="r1", rank=0, host="node-1", time=T, world_size=16,
                          local_rank=0, pid=4242, name="bert-large", config={"lr": 1e-4, "optim": {"name": "adamw"}},
                          tags=["baseline"], datasets=[{"name": "c4", "version": "2024-01"}],
                          model={"params": 340_000_000}, code={"commit": "abc", "dirty": False},
                          environment={"python": "3.11"}),
    "run_meta": envelope("run_meta", project="p", run="r1", rank=0, host="node-1", time=T,
                         datasets=[{"name": "wiki", "version": "v2", "rows": 100}]),
    "heartbeat": envelope("heartbeat", project="p", run="r1", rank=3, host="node-2", time=T, step=99),
    "run_end": envelope("run_end", project="p", run="r1", rank=0, host="node-1", time=T, status="finished"),
    "alert": envelope("alert", rule="nan_loss", fingerprint="f00d", state="firing", severity="critical",
                      labels={"run": "r1"}, annotations={"summary": "loss is NaN"}, values={"loss": 1.0},
                      starts_at=T, time=T, project="p", run="r1"),
}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_kind_round_trips(kind):
    event = VALID[kind]
    assert decode(encode(event)) == json.loads(json.dumps(event))
    assert event["v"] == SCHEMA_VERSION


def test_non_finite_training_values_are_legal_and_round_trip():
    raw = encode(metrics(values={"loss": math.nan, "grad_norm": math.inf, "x": -math.inf, "ok": 1.5}))
    assert b'"NaN"' in raw and b'"Infinity"' in raw and b'"-Infinity"' in raw
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    values = decode(raw)["values"]
    assert math.isnan(values["loss"]) and values["grad_norm"] == math.inf and values["x"] == -math.inf
    assert values["ok"] == 1.5


def test_topics_and_keys_are_part_of_the_contract():
    assert topic_name(Topic.METRICS, "trainmon.") == "trainmon.metrics"
    assert partition_key(VALID["metrics"]) == partition_key(VALID["heartbeat"]) == b"r1"
    assert partition_key(VALID["system"]) == b"node-1"
    assert partition_key(VALID["alert"]) == b"f00d"
    assert set(TOPIC_OF_KIND) == set(VALID)


def reason_of(raw: bytes) -> ContractError:
    with pytest.raises(ContractError) as caught:
        decode(raw)
    return caught.value


def as_bytes(event) -> bytes:
    return json.dumps(event).encode()


def without(event, key):
    return {k: v for k, v in event.items() if k != key}


BAD = [
    ("garbage bytes", b"\xff\xfe\x00garbage", Reason.MALFORMED, ""),
    ("not json", b"{loss: 1}", Reason.MALFORMED, ""),
    ("json array", b"[1, 2]", Reason.MALFORMED, ""),
    ("nan token", b'{"v": 1, "kind": "metrics", "x": NaN}', Reason.MALFORMED, ""),
    ("oversized", b" " * (MAX_EVENT_BYTES + 1), Reason.OVERSIZED, ""),
    ("no version", as_bytes(without(metrics(), "v")), Reason.MISSING_FIELD, "v"),
    ("unknown version", as_bytes(metrics(v=2)), Reason.UNKNOWN_VERSION, "v"),
    ("bool version", as_bytes(metrics(v=True)), Reason.UNKNOWN_VERSION, "v"),
    ("unknown kind", as_bytes(metrics(kind="gradients")), Reason.UNKNOWN_KIND, "kind"),
    ("no kind", as_bytes(without(metrics(), "kind")), Reason.MISSING_FIELD, "kind"),
    ("missing run", as_bytes(without(metrics(), "run")), Reason.MISSING_FIELD, "run"),
    ("missing step", as_bytes(without(metrics(), "step")), Reason.MISSING_FIELD, "step"),
    ("step as string", as_bytes(metrics(step="10")), Reason.WRONG_TYPE, "step"),
    ("step as float", as_bytes(metrics(step=10.0)), Reason.WRONG_TYPE, "step"),
    ("negative rank", as_bytes(metrics(rank=-1)), Reason.INVALID_VALUE, "rank"),
    ("rank as bool", as_bytes(metrics(rank=True)), Reason.WRONG_TYPE, "rank"),
    ("time in ms", as_bytes(metrics(time=T * 1000)), Reason.INVALID_VALUE, "time"),
    ("empty run", as_bytes(metrics(run="")), Reason.INVALID_VALUE, "run"),
    ("values not object", as_bytes(metrics(values=[1, 2])), Reason.WRONG_TYPE, "values"),
    ("value as string", as_bytes(metrics(values={"loss": "0.5"})), Reason.WRONG_TYPE, "values.loss"),
    ("value as list", as_bytes(metrics(values={"loss": [1]})), Reason.WRONG_TYPE, "values.loss"),
    ("value null", as_bytes(metrics(values={"loss": None})), Reason.WRONG_TYPE, "values.loss"),
    ("bad metric name", as_bytes(metrics(values={" loss": 1.0})), Reason.INVALID_VALUE, "values"),
    ("too many values", as_bytes(metrics(values={f"m{i}": 1 for i in range(MAX_VALUES + 1)})),
     Reason.INVALID_VALUE, "values"),
    ("epoch as list", as_bytes(metrics(epoch=[1])), Reason.WRONG_TYPE, "epoch"),
    ("nan epoch", as_bytes(metrics(epoch="NaN")), Reason.NON_FINITE, "epoch"),
    ("nan gpu figure", as_bytes({**system(), "gpus": [{"index": 0, "uuid": "GPU-0", "figures": {"power_w": "NaN"}}]}),
     Reason.NON_FINITE, "gpus[0].figures.power_w"),
    ("gpu without uuid", as_bytes({**system(), "gpus": [{"index": 0, "figures": {}}]}),
     Reason.MISSING_FIELD, "gpus[0].uuid"),
    ("bad run status", as_bytes({**VALID["run_end"], "status": "done"}), Reason.INVALID_VALUE, "status"),
    ("label not string", as_bytes({**VALID["alert"], "labels": {"gpu": 3}}), Reason.WRONG_TYPE, "labels.gpu"),
    ("bad alert state", as_bytes({**VALID["alert"], "state": "pending"}), Reason.INVALID_VALUE, "state"),
    ("phase as number", as_bytes({**VALID["heartbeat"], "phase": 1}), Reason.WRONG_TYPE, "phase"),
    ("empty phase", as_bytes({**VALID["heartbeat"], "phase": ""}), Reason.INVALID_VALUE, "phase"),
    ("pid as string", as_bytes({**VALID["run_start"], "pid": "4242"}), Reason.WRONG_TYPE, "pid"),
    ("negative pid", as_bytes({**VALID["run_start"], "pid": -1}), Reason.INVALID_VALUE, "pid"),
    ("pid past UInt32", as_bytes({**VALID["run_start"], "pid": 2**32}), Reason.INVALID_VALUE, "pid"),
]


@pytest.mark.parametrize("label,raw,reason,field", BAD, ids=[b[0] for b in BAD])
def test_malformed_input_gets_a_typed_reason(label, raw, reason, field):
    error = reason_of(raw)
    assert error.reason is reason, str(error)
    assert error.field == field
    assert reason.value in str(error)


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert decode(as_bytes(metrics(extra={"anything": 1})))["run"] == "r1"


def test_encode_refuses_what_json_cannot_carry():
    with pytest.raises(ContractError) as caught:
        encode(envelope("system", host="h", time=T, figures={"x": math.nan}))
    assert caught.value.reason is Reason.NON_FINITE
    with pytest.raises(ContractError) as caught:
        encode(metrics(values={"loss": object()}))
    assert caught.value.reason is Reason.WRONG_TYPE


def with_json_encoder(event):
    """encode() as without orjson: the reference the orjson path must match."""
    saved, contract.orjson = contract.orjson, None
    try:
        return encode(event)
    except ContractError as error:
        return (error.reason, str(error))
    finally:
        contract.orjson = saved


ENCODED = [
    ("every kind", None),
    ("exponents and extremes", metrics(step=2**63 - 1, epoch=1e-7, values={"a": 1e16, "b": -0.0, "c": 5e-324,
                                                                           "d": 1.7976931348623157e308, "e": 7})),
    ("non-finite training values", metrics(values={"loss": math.nan, "acc": math.inf, "lr": -math.inf})),
    ("unicode and escapes", envelope("run_meta", project="p", run="r1", time=T, config={
        "note": 'é ü 中文 \u2028 "quoted" back\\slash \n tab\t \x00', "nested": [1, [2.5, {"k": True}]]})),
    ("None and 'null' in a config", envelope("run_meta", project="p", run="r1", time=T,
                                             config={"opt": None, "name": "null"})),
    ("an integer past 64 bits", envelope("run_meta", project="p", run="r1", time=T, config={"seed": 2**70 + 1})),
    ("a non-str key", envelope("run_meta", project="p", run="r1", time=T, config={1: "one"})),
    ("a tuple and a float subclass", envelope("system", host="h", time=T, figures={"x": float.__new__(
        type("F", (float,), {}), 2.5)}, gpus=({"index": 0, "figures": {"util": 1.0}},))),
]


@pytest.mark.parametrize("label,event", ENCODED, ids=[c[0] for c in ENCODED])
def test_encode_writes_what_the_json_module_writes_up_to_number_spelling(label, event):
    """Whichever writer encode() takes (orjson, or the json module without it or for what orjson refuses),
    the bytes decode to the same event, or the event is refused for the same reason."""
    for one in (list(VALID.values()) if event is None else [event]):
        got, reference = encode(one), with_json_encoder(one)
        if isinstance(reference, tuple):  # refused either way, for the same reason
            with pytest.raises(ContractError) as caught:
                encode(one)
            assert (caught.value.reason, str(caught.value)) == reference
            continue
        assert json.loads(got) == json.loads(reference)


def test_encode_refuses_a_non_finite_number_outside_training_values_with_orjson_too(parser):
    """orjson would write NaN as null; encode() must refuse it as the json module does."""
    for event in (metrics(time=math.nan), metrics(epoch=math.inf), envelope("system", host="h", time=T,
                                                                           figures={"x": -math.inf})):
        with pytest.raises(ContractError) as caught:
            encode(event)
        assert caught.value.reason is Reason.NON_FINITE


def test_the_usual_event_is_written_by_orjson_when_installed(parser):
    event = VALID["metrics"]
    assert encode(event) == (orjson.dumps(event) if parser == "orjson" else with_json_encoder(event))


def test_envelope_rejects_unknown_kind_and_drops_nones():
    with pytest.raises(ContractError):
        envelope("nope")
    assert "epoch" not in envelope("metrics", epoch=None)


@pytest.mark.parametrize("phase", ["eval", "checkpoint", "data", "pause", "data-loader_2", "x" * 32])
def test_a_heartbeat_may_say_which_phase_the_rank_is_in(phase):
    assert decode(as_bytes({**VALID["heartbeat"], "phase": phase}))["phase"] == phase
    assert "phase" not in decode(encode(VALID["heartbeat"]))  # absent: training


@pytest.mark.parametrize("phase", ["Eval", "eval loop", "x" * 33, "ckpt/1", "évaluation"])
def test_a_heartbeat_with_a_bad_phase_is_refused_clearly(phase):
    error = reason_of(as_bytes({**VALID["heartbeat"], "phase": phase}))
    assert (error.reason, error.field) == (Reason.INVALID_VALUE, "phase")
    assert "1..32 of a-z 0-9 _ -" in str(error) and repr(phase[:40]) in str(error)


PAST_64_BITS = [
    ("step past 2**64", b'{"v":1,"kind":"metrics","project":"p","run":"r","rank":0,"host":"h","time":1764230400,'
     b'"step":18446744073709551616,"values":{"loss":1}}'),
    ("step past -2**63", b'{"v":1,"kind":"metrics","project":"p","run":"r","rank":0,"host":"h","time":1764230400,'
     b'"step":-9223372036854775809,"values":{"loss":1}}'),
    ("value past 2**64", b'{"v":1,"kind":"metrics","project":"p","run":"r","rank":0,"host":"h","time":1764230400,'
     b'"step":1,"values":{"tokens":100000000000000000001,"loss":-9223372036854775809}}'),
    ("epoch past 2**64", b'{"v":1,"kind":"metrics","project":"p","run":"r","rank":0,"host":"h","time":1764230400,'
     b'"step":1,"epoch":100000000000000000000,"values":{"loss":1}}'),
    ("gpu memory past 2**64", b'{"v":1,"kind":"system","host":"h","time":1764230400,"figures":{},"gpus":[{"index":0,'
     b'"uuid":"GPU-0","figures":{"mem_used_bytes":36893488147419103232},"processes":[{"pid":1,'
     b'"mem_used_bytes":36893488147419103232}]}]}'),
    ("gpu index past 2**64", b'{"v":1,"kind":"system","host":"h","time":1764230400,"figures":{},"gpus":[{'
     b'"index":18446744073709551617,"uuid":"GPU-0","figures":{}}]}'),
]


@pytest.mark.parametrize("label,raw", PAST_64_BITS, ids=[c[0] for c in PAST_64_BITS])
def test_integers_past_64_bits_decode_as_the_json_module_decodes_them(label, raw):
    """orjson reads such a literal as a float; the event, or its refusal and reason, must not change."""
    assert repr(decoded(raw)) == repr(with_json_module(raw))


def test_a_refused_integer_past_64_bits_keeps_its_reason():
    error = reason_of(PAST_64_BITS[0][1])
    assert (error.reason, error.field) == (Reason.INVALID_VALUE, "step")  # out of range, not "a float"


def test_free_form_config_keeps_integers_past_64_bits_exact():
    seed = 2**70 + 1
    event = decode(as_bytes({**VALID["run_start"], "config": {"seed": seed, "nested": {"big": -seed}}}))
    assert event["config"] == {"seed": seed, "nested": {"big": -seed}}
    assert type(event["config"]["seed"]) is int


def number_literals(rng: random.Random, count: int) -> list[str]:
    """Number spellings a producer may write: shortest reprs, long decimals, exponents, integers near the
    edges of 2**53, 2**63 and 2**64."""
    edges = [2**53, 2**63, 2**64]
    out = []
    for _ in range(count):
        pick = rng.randrange(5)
        if pick == 0:
            out.append(repr(rng.random() * 10.0 ** rng.randint(-300, 300)))
        elif pick == 1:
            out.append(f"{rng.randint(0, 10**18)}.{rng.randint(0, 10**25):025d}e{rng.randint(-320, 300)}")
        elif pick == 2:
            out.append(f"-0.{rng.randint(0, 10**30):030d}")
        elif pick == 3:
            out.append(str(rng.choice(edges) + rng.randint(-3, 3)))
        else:
            out.append(str(-rng.choice(edges) + rng.randint(-3, 3)))
    return out


def test_metrics_and_samples_decode_as_the_json_module_decodes_them():
    rng = random.Random(20261205)
    literals = number_literals(rng, 4000)
    for start in range(0, len(literals), 40):
        chunk = literals[start:start + 40]
        values = ",".join(f'"m{i}":{x}' for i, x in enumerate(chunk))
        for raw in (f'{{"v":1,"kind":"metrics","project":"p","run":"r","rank":0,"host":"h","time":1764230400.5,'
                    f'"step":7,"epoch":{chunk[0]},"values":{{{values},"loss":"NaN"}}}}',
                    f'{{"v":1,"kind":"system","host":"h","time":1764230400,"figures":{{{values}}},'
                    f'"gpus":[{{"index":0,"uuid":"GPU-0","figures":{{{values}}}}}]}}'):
            assert repr(decoded(raw.encode())) == repr(with_json_module(raw.encode())), raw[:200]


def test_the_fast_parser_is_orjson_when_installed(parser):
    assert (contract.orjson is orjson) == (parser == "orjson")


def walked(event: dict):
    """What the spec walk alone makes of a metrics event: the reference for validate's shortcut."""
    try:
        contract._apply(contract.SPECS["metrics"], event)
        return repr(event)
    except ContractError as error:
        return (error.reason, error.field, str(error))


def validated(event: dict):
    try:
        return repr(contract.validate(event))
    except ContractError as error:
        return (error.reason, error.field, str(error))


BAD_OR_ODD = [None, "", "x" * 300, "ok", 0, -1, 7, 2**32, 2**63, 2**64, 1.5, True, math.nan, math.inf, "NaN",
              1e300, 1_796_648_757, 32503680000.0, [], {}]
VALUE_MAPS = [{}, {"loss": 0.5}, {"loss": 1}, {"loss": 2**60}, {"loss": "NaN"}, {"loss": math.nan},
              {"loss": math.inf}, {"a new name": 0.5}, {"": 0.5}, {" loss": 0.5}, {"loss": 1e308, "lr": 1e308},
              {"loss": True}, {"loss": None}, {"loss": "0.5"}, [], "loss", None]


def test_the_usual_metrics_shortcut_decides_as_the_spec_walk_does(parser):
    """validate() takes the usual metrics event in straight-line code: every field's odd and bad values
    must come out as the spec walk makes them (the event, converted where it converts, or the refusal
    with its reason and field), so the shortcut never lets through what the walk refuses."""
    usual = metrics(epoch=1.5, values={"loss": 0.5, "lr": 3e-4}, producer="sdk-1", seq=3)
    contract.validate(dict(usual))  # the walk learns its value names (the shortcut knows only names seen)
    assert contract._usual_metrics(dict(usual))  # the usual event does take it
    cases = [dict(usual)]
    for field in contract.SPECS["metrics"]:  # the spec's fields: one it gains must be checked here too
        for value in BAD_OR_ODD + (VALUE_MAPS if field == "values" else []):
            cases.append({**usual, field: value})
        cases.append({k: v for k, v in usual.items() if k != field})
    for case in cases:
        assert validated(json.loads(json.dumps(case))) == walked(json.loads(json.dumps(case))), case
