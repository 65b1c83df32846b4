"""`Trainer(callbacks=[TrainmonAlerts(run)])` on real Lightning fits (a tiny regressor on CPU), its alerts
handed to the run's follower by a fake alerts source (tests/unit/test_sdk_alerts.py) at a chosen step:
the fit stops within one agreement interval, a hardware error saves a checkpoint first, a spike scales
the learning rate once (only when asked to), nothing happens without alerts, and a failure only warns."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.frameworks.helpers import require
from tests.frameworks.alert_fixtures import STEP_S, alerting, no_warnings, run, steps_bound  # noqa: F401 (fixtures)
from tests.unit.test_sdk_alerts import HOST, Feed, alert, feed, read  # noqa: F401 (feed: a fixture)

L = require("lightning")
torch = require("torch")

import trainmon  # noqa: E402
from trainmon import TrainmonWarning  # noqa: E402
from trainmon.agent.integrations.lightning_alerts import TrainmonAlerts  # noqa: E402

STEPS, SYNC, AT = 40, 4, 5  # the fit's length, the agreement interval, the step whose alerts arrive
LR = 0.01


class Regressor(L.LightningModule):
    """Records each step's learning rate; `at_step(step)` runs before the step at each global step."""

    def __init__(self, at_step: Callable[[int], None]) -> None:
        super().__init__()
        self.at_step = at_step
        self.net = torch.nn.Linear(4, 1)
        self.lrs: list[float] = []

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        self.at_step(self.global_step)
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=LR)
        # a scheduler that recomputes the rate from its base_lrs each step: scaling must survive it
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(run: trainmon.Run, feed: Feed, root: Path, *alerts: dict[str, Any], **options: Any) -> Regressor:
    """A fit of up to STEPS steps whose `alerts` the follower has read when step AT starts."""
    def at_step(step: int) -> None:
        if step == AT and alerts:
            read(run, feed, *alerts)

    x = torch.randn(4 * STEPS, 4, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)
    module = Regressor(at_step)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        callbacks=[TrainmonAlerts(run, sync_every=SYNC, **options)])
    trainer.fit(module, loader)
    return module


def test_a_stop_alert_ends_the_fit_at_the_next_agreement(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    module = fit(run, feed, tmp_path, alert("loss_non_finite"))
    # delivered at step AT's end; every rank agrees at the next multiple of SYNC and stops there
    assert len(module.lrs) == (AT // SYNC + 1) * SYNC <= AT + SYNC
    assert run.stop_reason["rule"] == "loss_non_finite"
    assert not list(tmp_path.rglob("*.ckpt")), "a NaN is no reason to save: the weights hold it"


def test_a_hardware_error_saves_a_checkpoint_then_stops(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    path = tmp_path / "hw.ckpt"
    module = fit(run, feed, tmp_path, alert("gpu_hardware_error", run=None, host=HOST), checkpoint_path=path)
    steps = len(module.lrs)
    assert AT < steps <= AT + SYNC
    assert torch.load(path, weights_only=False)["global_step"] == steps, "saved at the step it stopped"


def test_a_spike_scales_the_learning_rate_once_and_only_when_asked(run: trainmon.Run, feed: Feed,
                                                                   tmp_path: Path) -> None:
    spike = alert("loss_spike", severity="warning")
    untouched = fit(run, feed, tmp_path / "off", spike)
    assert untouched.lrs == [LR] * STEPS and not run.stop_requested

    scaled = fit(run, feed, tmp_path / "on", dict(spike, starts_at=2000.0), lr_factor=0.5)
    agreed = (AT // SYNC + 1) * SYNC
    assert scaled.lrs == [LR] * agreed + [LR / 2] * (STEPS - agreed), "once, kept by the scheduler, no stop"


def test_without_alerts_nothing_happens(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    module = fit(run, feed, tmp_path, lr_factor=0.5, checkpoint_path=tmp_path / "hw.ckpt")
    assert module.lrs == [LR] * STEPS and not run.stop_requested and not (tmp_path / "hw.ckpt").exists()


def test_a_failing_save_warns_once_and_still_stops(run: trainmon.Run, feed: Feed, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    with pytest.warns(TrainmonWarning, match="on_train_batch_end failed"):
        module = fit(run, feed, tmp_path, alert("gpu_hardware_error", run=None, host=HOST),
                     checkpoint_path=tmp_path / "file" / "hw.ckpt")  # a folder that is a file: the save fails
    assert AT < len(module.lrs) <= AT + SYNC


# --- end to end: a NaN loss, the real alert, the fit ends ------------------------------------------

NAN_AT, E2E_SYNC = 30, 10  # the step whose loss turns NaN; the agreement interval


class Diverging(L.LightningModule):
    """Its loss turns NaN at step NAN_AT (and stays NaN: the weights take it in), logged as `loss`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        time.sleep(STEP_S)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.global_step >= NAN_AT:
            loss = loss * float("nan")
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


@pytest.mark.integration
def test_an_injected_nan_ends_the_fit_through_the_real_alert(alerting, tmp_path: Path) -> None:
    """Real Kafka and a `trainmon process` worker: the fit ends within the alert's latency in steps
    plus one agreement interval."""
    from trainmon.agent.integrations.lightning_logger import TrainmonLogger

    run = trainmon.init("e2e", run_id=f"lightning-nan-{uuid.uuid4().hex[:6]}", settings=alerting,
                        spool_dir=tmp_path / "spool")
    try:
        x = torch.randn(4 * 64, 4, generator=torch.Generator().manual_seed(0))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)),
                                             batch_size=4)
        limit = steps_bound(NAN_AT, E2E_SYNC)
        trainer = L.Trainer(max_steps=3 * limit, accelerator="cpu", logger=TrainmonLogger(run=run),
                            log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[TrainmonAlerts(run, sync_every=E2E_SYNC)])
        trainer.fit(Diverging(), loader)
        assert run.stop_requested
        assert (run.stop_reason["rule"], run.stop_reason["values"]["step"]) == ("loss_non_finite", NAN_AT)
        print(f"lightning: NaN at step {NAN_AT}, stopped at {trainer.global_step} (bound {limit})")
        assert NAN_AT < trainer.global_step <= limit and trainer.global_step % E2E_SYNC == 0
    finally:
        run.finish()
