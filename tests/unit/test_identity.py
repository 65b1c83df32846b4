"""Identity from the launcher's environment: every rank of one job derives the same run id alone."""

from __future__ import annotations

import re

import pytest

from trainmon.agent.identity import host_name, ranks, resolve, run_id, slug

TORCHRUN = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "GROUP_RANK": "2",
            "TORCHELASTIC_RUN_ID": "job-42", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
SLURM = {"SLURM_JOB_ID": "12345", "SLURM_STEP_ID": "0", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
         "SLURM_NTASKS": "16", "SLURM_NODEID": "4"}


def ident(environ: dict[str, str], project: str = "llm", name: str | None = None, **kwargs):
    return resolve(environ, project, name, **kwargs)


def test_single_process_gets_a_fresh_readable_id() -> None:
    first, second = ident({}), ident({})
    assert (first.rank, first.local_rank, first.world_size, first.launcher) == (0, 0, 1, "single")
    assert first.run_id_source == "fresh" and first.notes == ()
    assert re.fullmatch(r"llm-\d{8}-\d{6}-[0-9a-f]{6}", first.run)
    assert first.run != second.run


def test_torchrun_ranks_and_shared_id() -> None:
    identity = ident(TORCHRUN)
    assert (identity.rank, identity.local_rank, identity.world_size, identity.node_rank) == (5, 1, 8, 2)
    assert identity.launcher == "torchrun"
    assert (identity.run, identity.run_id_source) == ("torchrun-job-42", "torchrun")


def test_two_torchrun_ranks_on_two_nodes_share_the_id() -> None:
    other = {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}
    assert ident(TORCHRUN).run == ident(other).run
    assert ident(TORCHRUN).rank != ident(other).rank


def test_torchrun_default_rendezvous_id_none_is_ignored() -> None:
    environ = {**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"}
    identity = ident(environ, name="exp")
    assert identity.run_id_source == "rendezvous"
    assert identity.run == ident({**environ, "RANK": "0"}, name="exp").run
    assert any("TRAINMON_RUN_ID" in note for note in identity.notes)  # collision risk is said


def test_rendezvous_fallback_differs_by_address_project_and_name() -> None:
    base = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    ids = {ident(base).run, ident({**base, "MASTER_PORT": "2"}).run, ident(base, project="other").run,
           ident(base, name="n").run}
    assert len(ids) == 4


def test_slurm_srun_step() -> None:
    identity = ident(SLURM)
    assert (identity.rank, identity.local_rank, identity.world_size, identity.node_rank) == (9, 1, 16, 4)
    assert (identity.launcher, identity.run, identity.run_id_source) == ("slurm", "slurm-12345.0", "slurm")
    assert ident({**SLURM, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}).run == identity.run


def test_slurm_step_task_count_beats_allocation_task_count() -> None:
    assert ident({**SLURM, "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3"}).world_size == 4


def test_slurm_batch_script_is_one_process_whatever_ntasks_says() -> None:
    batch = {"SLURM_JOB_ID": "777", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}  # no step: not under srun
    identity = ident(batch)
    assert (identity.rank, identity.world_size, identity.launcher) == (0, 1, "single")
    assert identity.run == "slurm-777"


def test_torchrun_under_slurm_takes_torch_ranks_and_slurm_job() -> None:
    identity = ident({**SLURM, **TORCHRUN})
    assert (identity.rank, identity.world_size, identity.launcher) == (5, 8, "torchrun")
    assert re.fullmatch(r"slurm-12345\.0-[0-9a-f]{6}", identity.run)  # + which torchrun launch
    same_job_id = ident({**SLURM, **TORCHRUN, "TORCHELASTIC_RUN_ID": "12345"})
    assert same_job_id.run == "slurm-12345.0"


def test_kubernetes_jobset() -> None:
    environ = {"RANK": "3", "WORLD_SIZE": "4", "JOBSET_NAME": "pretrain-7b", "MASTER_ADDR": "x"}
    assert (ident(environ).run, ident(environ).run_id_source) == ("k8s-pretrain-7b", "kubernetes")


def test_trainmon_run_id_wins_over_everything() -> None:
    environ = {**SLURM, **TORCHRUN, "TRAINMON_RUN_ID": "my-run"}
    identity = ident(environ, run_id_arg="explicit-id")
    assert (identity.run, identity.run_id_source) == ("my-run", "TRAINMON_RUN_ID")


def test_explicit_run_id_beats_derived() -> None:
    assert ident(TORCHRUN, run_id_arg="abc").run == "abc"


def test_bad_explicit_run_id_is_noted_and_derivation_goes_on() -> None:
    identity = ident(TORCHRUN, run_id_arg="  padded ")
    assert identity.run == "torchrun-job-42"
    assert any("ignored explicit run id" in note for note in identity.notes)


def test_explicit_ranks_override_the_environment_field_by_field() -> None:
    identity = ident(TORCHRUN, rank=2)
    assert (identity.rank, identity.local_rank, identity.world_size) == (2, 1, 8)
    explicit = ident({}, rank=1, world_size=2, local_rank=1)
    assert (explicit.rank, explicit.local_rank, explicit.world_size, explicit.launcher) == (1, 1, 2, "explicit")


def test_explicit_rank_without_world_size_is_noted_and_never_gets_a_fresh_id() -> None:
    identity = ident({}, rank=0)
    assert identity.world_size == 1
    assert identity.run_id_source == "rendezvous"  # rank 0 and rank 3 must still agree
    assert identity.run == ident({}, rank=3).run
    assert any("world size unknown" in note for note in identity.notes)


def test_explicit_world_size_one_is_a_single_process() -> None:
    assert ident({}, rank=0, world_size=1).run_id_source == "fresh"


@pytest.mark.parametrize("value", ["abc", "-1", ""])
def test_bad_environment_values_are_noted_not_raised(value: str) -> None:
    found, notes = ranks({**TORCHRUN, "RANK": "x" if value == "" else value})
    assert found.rank == 0
    assert notes


@pytest.mark.parametrize("bad", [True, 1.5, "2", -1])
def test_bad_explicit_values_are_noted(bad: object) -> None:
    found, notes = ranks({}, rank=bad)
    assert found.rank == 0 and notes


def test_numpy_integer_rank_is_accepted() -> None:
    np = pytest.importorskip("numpy")
    found, notes = ranks({}, rank=np.int64(3), world_size=np.int32(4))
    assert (found.rank, found.world_size, notes) == (3, 4, [])


def test_repeated_init_in_one_job_gets_a_sequence_suffix() -> None:
    found, _ = ranks(SLURM)
    assert run_id(SLURM, "llm", None, found, sequence=1)[0] == "slurm-12345.0"
    assert run_id(SLURM, "llm", None, found, sequence=2)[0] == "slurm-12345.0-2"


def test_ids_are_sanitised() -> None:
    found, _ = ranks({"RANK": "0", "WORLD_SIZE": "2"})
    run, _, _ = run_id({"TORCHELASTIC_RUN_ID": "a b/c"}, "p", None, found)
    assert run == "torchrun-a-b-c"
    assert slug("My Project/LLM 7B!") == "my-project-llm-7b"
    assert slug("***") == "run"


def test_host_name() -> None:
    assert host_name({"TRAINMON_HOST": "node-17"}) == "node-17"
    assert host_name({})
