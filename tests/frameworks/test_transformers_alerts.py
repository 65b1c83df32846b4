"""`Trainer(callbacks=[TrainmonAlertsCallback(run)])` on real transformers runs (a tiny BERT made from a
config, CPU), its alerts handed to the run's follower by a fake alerts source (tests/unit/test_sdk_alerts.py)
at a chosen step: training stops within one agreement interval, a hardware error has the Trainer save
its checkpoint first, a spike scales the learning rate once (only when asked to), nothing happens
without alerts, and a failure only warns."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks.helpers import require
from tests.frameworks.test_transformers_callback import tiny_bert
from tests.frameworks.alert_fixtures import STEP_S, alerting, no_warnings, run, steps_bound  # noqa: F401 (fixtures)
from tests.unit.test_sdk_alerts import HOST, Feed, alert, feed, read  # noqa: F401 (feed: a fixture)

torch = require("torch")
transformers = require("transformers")

import trainmon  # noqa: E402
from trainmon import TrainmonWarning  # noqa: E402
from trainmon.agent.alert_actions import any_rank  # noqa: E402
from trainmon.agent.integrations.alert_flags import AlertFlags  # noqa: E402
from trainmon.agent.integrations.transformers_alerts import TrainmonAlertsCallback  # noqa: E402


STEPS, SYNC, AT = 24, 4, 5  # the run's length, the agreement interval, the step whose alerts arrive
LR = 1e-3


class Probe(transformers.TrainerCallback):
    """Has the follower read `alerts` when step AT starts; records each step's learning rate."""

    def __init__(self, run: trainmon.Run, feed: Feed, alerts: tuple[dict[str, Any], ...]) -> None:
        self.run, self.feed, self.alerts = run, feed, alerts
        self.lrs: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if state.global_step == AT and self.alerts:
            read(self.run, self.feed, *self.alerts)
        self.lrs.append(optimizer.param_groups[0]["lr"])


def train(run: trainmon.Run, feed: Feed, output: Path, *alerts: dict[str, Any], **options: Any) -> list[float]:
    """Up to STEPS steps with a constant rate (through a LambdaLR: scaling must survive its steps);
    the learning rate of each step taken."""
    generator = torch.Generator().manual_seed(0)
    samples = [{"input_ids": torch.randint(1, 64, (8,), generator=generator),
                "attention_mask": torch.ones(8, dtype=torch.long), "labels": torch.tensor(i % 2)} for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(output), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, save_strategy="no", use_cpu=True, report_to="none",
        disable_tqdm=True)
    probe = Probe(run, feed, alerts)
    transformers.Trainer(model=tiny_bert(), args=args, train_dataset=samples,
                         callbacks=[probe, TrainmonAlertsCallback(run, sync_every=SYNC, **options)]).train()
    return probe.lrs


def test_a_stop_alert_ends_training_at_the_next_agreement(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    lrs = train(run, feed, tmp_path, alert("loss_non_finite"))
    assert len(lrs) == (AT // SYNC + 1) * SYNC <= AT + SYNC
    assert run.stop_reason["rule"] == "loss_non_finite"
    assert not list(tmp_path.glob("checkpoint-*")), "a NaN is no reason to save: the weights hold it"


def test_a_hardware_error_has_the_trainer_save_then_stop(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    lrs = train(run, feed, tmp_path, alert("gpu_hardware_error", run=None, host=HOST))
    steps = len(lrs)
    assert AT < steps <= AT + SYNC
    (checkpoint,) = tmp_path.glob("checkpoint-*")
    assert checkpoint.name == f"checkpoint-{steps}", "saved at the step it stopped"
    assert (checkpoint / "optimizer.pt").exists() and (checkpoint / "trainer_state.json").exists(), "resumable"


def test_a_spike_scales_the_learning_rate_once_and_only_when_asked(run: trainmon.Run, feed: Feed,
                                                                   tmp_path: Path) -> None:
    spike = alert("loss_spike", severity="warning")
    assert train(run, feed, tmp_path / "off", spike) == [LR] * STEPS and not run.stop_requested

    scaled = train(run, feed, tmp_path / "on", dict(spike, starts_at=2000.0), lr_factor=0.5)
    agreed = (AT // SYNC + 1) * SYNC
    assert scaled == pytest.approx([LR] * agreed + [LR / 2] * (STEPS - agreed)), "once, kept by the scheduler"


def test_without_alerts_nothing_happens(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    assert train(run, feed, tmp_path, lr_factor=0.5) == [LR] * STEPS
    assert not run.stop_requested and not list(tmp_path.glob("checkpoint-*"))


def test_a_failing_hook_warns_once_and_training_goes_on(run: trainmon.Run, feed: Feed, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: AlertFlags, reduce: Any) -> None:
        raise RuntimeError("a reduction that failed")

    monkeypatch.setattr(AlertFlags, "agree", broken)
    with pytest.warns(TrainmonWarning, match="on_step_end failed") as caught:
        lrs = train(run, feed, tmp_path)
    assert len(lrs) == STEPS and len([w for w in caught if issubclass(w.category, TrainmonWarning)]) == 1


ANY_RANK = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from trainmon.agent.alert_actions import any_rank
    rank, port = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    flags = [(True, False, False), (False, False, True)][rank]  # each rank saw something else
    print(json.dumps(any_rank(*flags)))
    dist.destroy_process_group()
""")


def test_any_rank_ors_each_flag_over_all_ranks() -> None:
    """The agreement the transformers callback relies on, on two real gloo processes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ranks = [subprocess.Popen([sys.executable, "-c", ANY_RANK, str(rank), str(port)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [json.loads(out) for out, _ in outputs] == [[True, False, True]] * 2
    assert any_rank(True, False) == [True, False], "no process group: the flags as given"


# --- end to end: a NaN loss, the real alert, training ends ------------------------------------------

NAN_AT, E2E_SYNC = 30, 10  # the step whose loss turns NaN; the agreement interval


class Diverging(torch.nn.Module):
    """A regressor whose loss turns NaN at step NAN_AT (and stays NaN: the weights take it in)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.steps = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        time.sleep(STEP_S)
        self.steps += 1  # one forward per step: no gradient accumulation, no evaluation
        loss = torch.nn.functional.mse_loss(self.net(x), labels)
        return {"loss": loss * float("nan") if self.steps >= NAN_AT else loss}


@pytest.mark.integration
def test_an_injected_nan_ends_training_through_the_real_alert(alerting, tmp_path: Path) -> None:
    """Real Kafka and a `trainmon process` worker: training ends within the alert's latency in steps
    plus one agreement interval."""
    from trainmon.agent.integrations.transformers_callback import TrainmonCallback

    run = trainmon.init("e2e", run_id=f"transformers-nan-{uuid.uuid4().hex[:6]}", settings=alerting,
                        spool_dir=tmp_path / "spool")
    try:
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        samples = [{"x": row, "labels": row.sum(dim=0, keepdim=True)} for row in x]
        limit = steps_bound(NAN_AT, E2E_SYNC)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=3 * limit, per_device_train_batch_size=4, learning_rate=LR,
            logging_steps=1, logging_nan_inf_filter=False, save_strategy="no", use_cpu=True, report_to="none",
            disable_tqdm=True)  # logging_nan_inf_filter=False: else the Trainer logs a NaN loss as the mean so far
        trainer = transformers.Trainer(model=Diverging(), args=args, train_dataset=samples,
                                       callbacks=[TrainmonAlertsCallback(run, sync_every=E2E_SYNC),
                                                  TrainmonCallback(run=run)])
        trainer.train()
        assert run.stop_requested
        assert (run.stop_reason["rule"], run.stop_reason["values"]["step"]) == ("loss_non_finite", NAN_AT)
        step = trainer.state.global_step
        print(f"transformers: NaN at step {NAN_AT}, stopped at {step} (bound {limit})")
        assert NAN_AT < step <= limit and step % E2E_SYNC == 0
    finally:
        run.finish()
