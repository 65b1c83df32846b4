"""Who this training process is: project, run id, rank, local rank, world size, host.

Pure functions over an environ mapping, so every launcher can be tested without touching
os.environ. One multi-node run is ONE run: every rank must arrive at the same run id on its own,
without talking to the others, so the id comes from what the launcher already shares with all
ranks (see docs/sdk.md, "Identity"). Problems are returned as `Identity.notes` for the SDK to warn
about; nothing here raises on bad environment values.
"""

from __future__ import annotations

import hashlib
import operator
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Mapping

from trainmon.contract import MAX_TEXT_LEN

RUN_ID_ENV = "TRAINMON_RUN_ID"
HOST_ENV = "TRAINMON_HOST"
_SLURM_NOT_A_STEP = 4_294_967_290  # Slurm's batch/extern/interactive pseudo step ids are above this


@dataclass(frozen=True)
class Ranks:
    rank: int
    local_rank: int | None  # None: explicit rank without a launcher, so unknown
    world_size: int
    node_rank: int | None
    launcher: str  # "torchrun" (any torch.distributed env launcher), "slurm", "explicit", "single"
    world_size_known: bool = True


@dataclass(frozen=True)
class Identity:
    project: str
    run: str
    rank: int
    local_rank: int | None
    world_size: int
    host: str
    node_rank: int | None
    launcher: str
    run_id_source: str  # TRAINMON_RUN_ID, explicit, slurm, torchrun, kubernetes, fresh, rendezvous
    notes: tuple[str, ...] = field(default=())


def _env_int(environ: Mapping[str, str], name: str, notes: list[str], minimum: int = 0) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        notes.append(f"ignored {name}={raw[:40]!r}: not an integer")
        return None
    if value < minimum:
        notes.append(f"ignored {name}={value}: must be >= {minimum}")
        return None
    return value


def _arg_int(value: object, name: str, notes: list[str], minimum: int = 0) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError("bool")
        number = operator.index(value)  # int, numpy integer, integer tensor
    except TypeError:
        notes.append(f"ignored {name}={value!r}: not an integer")
        return None
    if number < minimum:
        notes.append(f"ignored {name}={number}: must be >= {minimum}")
        return None
    return number


def slurm_step(environ: Mapping[str, str]) -> int | None:
    """The srun step id, or None in a batch script / salloc shell (not a task of a parallel step)."""
    for name in ("SLURM_STEP_ID", "SLURM_STEPID"):
        raw = environ.get(name, "")
        if raw.isdigit() and int(raw) < _SLURM_NOT_A_STEP:
            return int(raw)
    return None


def ranks(environ: Mapping[str, str], rank: object = None, local_rank: object = None,
          world_size: object = None) -> tuple[Ranks, list[str]]:
    """Explicit arguments win field by field; else the torch.distributed variables (torchrun,
    accelerate, deepspeed all set RANK); else Slurm's, but only inside an srun step: a batch script
    sees SLURM_NTASKS of the whole allocation while being one process."""
    notes: list[str] = []
    env_rank = env_local = env_world = node = None
    launcher = "single"
    if environ.get("RANK", "") != "":
        launcher = "torchrun"
        env_rank = _env_int(environ, "RANK", notes)
        env_local = _env_int(environ, "LOCAL_RANK", notes)
        env_world = _env_int(environ, "WORLD_SIZE", notes, minimum=1)
        node = _env_int(environ, "GROUP_RANK", notes)
    elif environ.get("SLURM_PROCID", "") != "" and slurm_step(environ) is not None:
        launcher = "slurm"
        env_rank = _env_int(environ, "SLURM_PROCID", notes)
        env_local = _env_int(environ, "SLURM_LOCALID", notes)
        world_name = "SLURM_STEP_NUM_TASKS" if environ.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
        env_world = _env_int(environ, world_name, notes, minimum=1)
        node = _env_int(environ, "SLURM_NODEID", notes)

    arg_rank = _arg_int(rank, "rank", notes)
    arg_local = _arg_int(local_rank, "local_rank", notes)
    arg_world = _arg_int(world_size, "world_size", notes, minimum=1)
    if launcher == "single" and (arg_rank is not None or arg_world is not None):
        launcher = "explicit"

    final_rank = arg_rank if arg_rank is not None else env_rank
    final_world = arg_world if arg_world is not None else env_world
    final_local = arg_local if arg_local is not None else env_local
    known = True
    if final_rank is None:
        final_rank = 0
    if final_world is None:
        if launcher != "single":
            known = False
            notes.append(f"world size unknown: pass world_size= to trainmon.init (taking {final_rank + 1})")
        final_world = final_rank + 1
    if final_local is None and launcher == "single":
        final_local = 0
    if final_rank >= final_world:
        notes.append(f"rank {final_rank} >= world size {final_world}")
    return Ranks(final_rank, final_local, final_world, node, launcher, known), notes


def slug(text: str, limit: int = 40) -> str:
    """Lower-case letters, digits and single dashes: safe in ids, paths and URLs."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "run"


def safe_id(text: str) -> str:
    """Letters, digits, ".", "_" and "-" only: a source id made safe for run ids and file names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:200]


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def run_id(environ: Mapping[str, str], project: str, name: str | None, ranks_: Ranks,
           explicit: str | None = None, sequence: int = 1, now: float | None = None) -> tuple[str, str, list[str]]:
    """(run id, where it came from, notes). First match wins:
    TRAINMON_RUN_ID, explicit, Slurm job (+ step), torchrun's rendezvous id, JobSet name,
    a fresh random id for one process, else a hash of the rendezvous address (warned).
    `sequence` counts init() calls in this process: the 2nd derived id of a job gets "-2", the same on
    every rank, so a sweep of runs inside one job does not merge into one."""
    notes: list[str] = []
    for source, value in ((RUN_ID_ENV, environ.get(RUN_ID_ENV)), ("explicit", explicit)):
        if value is None:
            continue
        if isinstance(value, str) and 0 < len(value) <= MAX_TEXT_LEN and value.strip() == value:
            return value, source, notes
        notes.append(f"ignored {source} run id {str(value)[:40]!r}: must be 1..{MAX_TEXT_LEN} chars, no edge spaces")

    suffix = f"-{sequence}" if sequence > 1 else ""
    rendezvous = environ.get("TORCHELASTIC_RUN_ID", "")
    rendezvous = "" if rendezvous in ("", "none") else rendezvous  # "none": torchrun's default
    job = safe_id(environ.get("SLURM_JOB_ID", ""))
    if job:
        step = slurm_step(environ)
        derived = f"slurm-{job}" + (f".{step}" if step is not None else "")
        if rendezvous and rendezvous != environ.get("SLURM_JOB_ID"):
            derived += f"-{_short_hash(rendezvous)[:6]}"  # two torchrun launches in one step/allocation
        return derived + suffix, "slurm", notes
    if rendezvous:
        return f"torchrun-{safe_id(rendezvous) or _short_hash(rendezvous)}{suffix}", "torchrun", notes
    jobset = safe_id(environ.get("JOBSET_NAME", ""))
    if jobset:
        return f"k8s-{jobset}{suffix}", "kubernetes", notes
    if ranks_.world_size == 1 and ranks_.world_size_known:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        return f"{slug(project)}-{stamp}-{secrets.token_hex(3)}", "fresh", notes
    address = f"{environ.get('MASTER_ADDR', '')}:{environ.get('MASTER_PORT', '')}"
    notes.append(
        f"run id derived from MASTER_ADDR:MASTER_PORT ({address}), project and name: a later job with the "
        f"same values gets the same id and its data merges with this run's; set {RUN_ID_ENV} to the same "
        "unique value on every rank")
    return f"{slug(project)}-{_short_hash(address, project, name or '')}{suffix}", "rendezvous", notes


def host_name(environ: Mapping[str, str]) -> str:
    """$TRAINMON_HOST (e.g. the Kubernetes node name rather than the pod name), else the hostname."""
    name = environ.get(HOST_ENV) or socket.gethostname() or "unknown"
    return name[:MAX_TEXT_LEN]


def resolve(environ: Mapping[str, str], project: str, name: str | None = None, *, run_id_arg: str | None = None,
            rank: object = None, local_rank: object = None, world_size: object = None,
            sequence: int = 1) -> Identity:
    """Everything at once; `notes` collects what the caller should warn about."""
    found, notes = ranks(environ, rank, local_rank, world_size)
    run, source, id_notes = run_id(environ, project, name, found, run_id_arg, sequence)
    return Identity(project=project, run=run, rank=found.rank, local_rank=found.local_rank,
                    world_size=found.world_size, host=host_name(environ), node_rank=found.node_rank,
                    launcher=found.launcher, run_id_source=source, notes=tuple(notes + id_notes))
