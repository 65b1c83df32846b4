"""TensorBoard event files -> ImportedRun, without TensorFlow or TensorBoard.

An event file is a TFRecord stream of `Event` protocol buffers: per record an 8-byte length, its
masked CRC-32C, the bytes, their CRC. The record framing is read here (the length's CRC is checked:
a bad one means the file is not an event file or is corrupt); the messages are decoded with the
protocol buffers tensorboardX ships (tensorboardX.proto, the same wire format as TensorFlow's). That
costs tensorboardX (90 kB wheel) and protobuf; TensorBoard's own reader would bring grpcio, the data
server, werkzeug and more (docs/history.md, "Dependencies").

What is read, per directory holding event files (one TensorBoard run, named by its path under DIR):
scalars, whether written as `simple_value` (tensorboardX, torch.utils.tensorboard, TF1) or as a
one-element float tensor (TF2's tf.summary.scalar), with their steps and wall times; the hparams
plugin's session start (tensorboardX / torch `add_hparams`, Keras' hparams API) as the run's config.
Images, histograms, text and graphs are skipped. A file cut short (a writer killed mid-record) is
read up to its last whole record.
"""

from __future__ import annotations

import hashlib
import re
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from trainmon.agent.importers.run import ImportedRun
from trainmon.errors import TrainmonError

MARKER = "tfevents"  # in every event file's name: events.out.tfevents.<time>.<host>[.<pid>.<n>][.v2]
_HOST = re.compile(r"tfevents\.\d+\.(?P<host>.+?)(?:\.\d+)*(?:\.v2)?$")
_FLOAT_DTYPES = {1: "<f4", 2: "<f8", 19: "<f2"}  # TensorFlow's DT_FLOAT, DT_DOUBLE, DT_HALF


class EventFileError(TrainmonError):
    """A file that is not a readable TensorBoard event file."""


def _protos() -> tuple[Any, Any]:
    """tensorboardX's Event and HParamsPluginData messages, or a TrainmonError that says how to get them."""
    try:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    except ImportError:
        raise TrainmonError("reading TensorBoard logs needs tensorboardX: pip install 'trainmon[import]'") from None
    return Event, HParamsPluginData


def runs_in(directory: Path) -> dict[str, list[Path]]:
    """Directories under `directory` (itself included) holding event files: relative name -> files."""
    if not directory.is_dir():
        raise EventFileError(f"{directory} is not a directory")
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.rglob(f"*{MARKER}*")):
        if path.is_file():
            found.setdefault(path.parent.relative_to(directory).as_posix(), []).append(path)
    return found


def records(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The records of one TFRecord file; stops quietly at a record cut short at the end."""
    from tensorboardX.record_writer import masked_crc32c

    offset = 0
    while True:
        header = stream.read(12)
        if len(header) < 12:
            return
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != length_crc:
            raise EventFileError(f"{name}: not an event file, or corrupt at byte {offset} (bad length checksum)")
        data = stream.read(length)
        if len(data) < length or len(stream.read(4)) < 4:
            return
        offset += 16 + length
        yield data


def scalar(value: Any) -> float | None:
    """A summary value's number: simple_value, or a tensor holding one float; None for anything else."""
    import numpy as np

    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind != "tensor":
        return None
    tensor = value.tensor
    if tensor.dtype not in _FLOAT_DTYPES or any(d.size != 1 for d in tensor.tensor_shape.dim):
        return None  # text, a histogram, an image: not a scalar
    if tensor.tensor_content:
        numbers = np.frombuffer(tensor.tensor_content, dtype=_FLOAT_DTYPES[tensor.dtype])
        return float(numbers[0]) if numbers.size == 1 else None
    for repeated in (tensor.float_val, tensor.double_val, tensor.half_val):
        if len(repeated) == 1:
            if repeated is tensor.half_val:  # float16 bits in an int field
                return float(np.array([repeated[0]], dtype=np.uint16).view(np.float16)[0])
            return float(repeated[0])
    return None


def hparams(value: Any) -> dict[str, Any] | None:
    """The hyperparameters of an hparams plugin session start, else None."""
    plugin = value.metadata.plugin_data
    if plugin.plugin_name != "hparams" or not plugin.content:
        return None
    data = _protos()[1].FromString(plugin.content)
    if not data.HasField("session_start_info"):
        return None
    out: dict[str, Any] = {}
    for key, item in data.session_start_info.hparams.items():
        kind = item.WhichOneof("kind")
        out[key] = None if kind in (None, "null_value") else getattr(item, kind)
    return out


def read_run(name: str, files: list[Path], *, project: str, run: str | None = None, host: str | None = None,
             user: str | None = None, status: str | None = "finished") -> ImportedRun:
    """One TensorBoard run (the event files of one directory; a restarted writer adds files)."""
    event_type = _protos()[0]
    points: list[tuple[str, int, float, float]] = []
    config: dict[str, Any] = {}
    first = last = None
    for path in sorted(files):
        with path.open("rb") as stream:
            for data in records(stream, str(path)):
                try:
                    event = event_type.FromString(data)
                except Exception as exc:  # protobuf's DecodeError: a record that is no Event
                    raise EventFileError(f"{path}: a record is not a TensorBoard event ({exc})") from None
                first = event.wall_time if first is None else min(first, event.wall_time)  # the writer opening
                if event.summary.value:  # the last summary, not a writer opened and left: how far the run got
                    last = event.wall_time if last is None else max(last, event.wall_time)
                for value in event.summary.value:
                    number = scalar(value)
                    if number is not None:
                        points.append((value.tag, event.step, event.wall_time, number))
                    else:
                        config.update(hparams(value) or {})
    if first is None:
        raise EventFileError(f"{files[0].parent}: its event files hold no events")
    parsed = _HOST.search(sorted(files)[0].name)
    label = name if name != "." else files[0].parent.name
    return ImportedRun(
        project=project, run=run or run_id(label, first), source=f"tensorboard:{files[0].parent}", started=first,
        host=host or (parsed["host"] if parsed else None) or "imported", name=label, user=user, config=config,
        points=points, status=status, ended=last)


def run_id(name: str, started: float) -> str:
    """A run id from the run's name and first wall time: the same log always gets the same id (so a
    second import of it is recognised), two runs of one name get two."""
    stamp = datetime.fromtimestamp(started, timezone.utc).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256(f"{name}\n{started!r}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:120] or "run"
    return f"tb-{slug}-{stamp}-{digest}"


def read(directory: str | Path, *, project: str | None = None, run: str | None = None, host: str | None = None,
         user: str | None = None, status: str | None = "finished") -> list[ImportedRun]:
    """Every TensorBoard run under `directory`. project: default the directory's name; run: an id for
    the one run found (refused when there are several)."""
    directory = Path(directory).expanduser().resolve()
    found = runs_in(directory)
    if not found:
        raise EventFileError(f"no TensorBoard event files (*{MARKER}*) under {directory}")
    if run is not None and len(found) > 1:
        raise EventFileError(f"--run names one run, but {directory} holds {len(found)}: "
                             f"{', '.join(list(found)[:5])}{' ...' if len(found) > 5 else ''}")
    return [read_run(name, files, project=project or directory.name, run=run, host=host, user=user, status=status)
            for name, files in found.items()]
