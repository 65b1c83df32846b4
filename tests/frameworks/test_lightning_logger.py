"""`Trainer(logger=TrainmonLogger())` on a real Lightning fit: a tiny regressor, 2 epochs of 4 steps on CPU."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.frameworks.helpers import Recorder, require

L = require("lightning")
torch = require("torch")

from trainmon.agent.integrations.lightning_logger import TrainmonLogger  # noqa: E402

STEPS_PER_EPOCH, EPOCHS = 4, 2
PARAMETERS = 4 * 8 + 8 + 8 * 1 + 1  # Linear(4, 8) and Linear(8, 1)


class Regressor(L.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.05, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.hparams.fail_at_step:
            raise RuntimeError("bad batch")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def fit(logger: TrainmonLogger, root: Path, **module: object) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8 * STEPS_PER_EPOCH, 4, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=logger, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(Regressor(**module), loader, loader)


def test_a_fit_logs_config_model_and_each_step_with_its_epoch(recorder: Recorder, tmp_path: Path) -> None:
    logger = TrainmonLogger("frameworks", "lightning", publisher=recorder, heartbeat_s=60)
    fit(logger, tmp_path)

    train = recorder.points("train_loss")
    assert [(step, epoch) for step, epoch, _ in train] == [
        (step, step // STEPS_PER_EPOCH) for step in range(STEPS_PER_EPOCH * EPOCHS)]
    assert all(value > 0 for _, _, value in train)
    assert [(step, epoch) for step, epoch, _ in recorder.points("val_loss")] == [
        (STEPS_PER_EPOCH * (epoch + 1) - 1, epoch) for epoch in range(EPOCHS)]
    assert not [e for e in recorder.kinds("metrics") if "epoch" in e["values"]], "epoch is the event's, not a metric"
    assert recorder.config() == {"hidden": 8, "lr": 0.05, "fail_at_step": None}
    model = recorder.model()
    assert model["parameters"] == PARAMETERS and "Linear(in_features=4, out_features=8" in model["summary"]


def test_checkpoint_saves_are_expected_pauses_and_the_checkpoint_folder_is_the_runs(
        recorder: Recorder, tmp_path: Path) -> None:
    logger = TrainmonLogger("frameworks", publisher=recorder, heartbeat_s=60)
    fit(logger, tmp_path)
    assert recorder.phases() == ["checkpoint", None] * EPOCHS  # ModelCheckpoint saves at each epoch's end
    (checkpoint,) = (tmp_path / "frameworks" / logger.version / "checkpoints").glob("*.ckpt")
    assert checkpoint.stat().st_size > 0


def test_a_failed_fit_ends_the_loggers_run_failed_but_never_the_users(recorder: Recorder, tmp_path: Path) -> None:
    import trainmon

    logger = TrainmonLogger("frameworks", publisher=recorder, heartbeat_s=60)
    with pytest.raises(RuntimeError, match="bad batch"):
        fit(logger, tmp_path / "own", fail_at_step=2)
    assert [e["status"] for e in recorder.kinds("run_end")] == ["failed"]

    mine = trainmon.init("frameworks", publisher=(users := Recorder()), heartbeat_s=60)
    with pytest.raises(RuntimeError, match="bad batch"):
        fit(TrainmonLogger(run=mine), tmp_path / "users", fail_at_step=2)
    assert not users.kinds("run_end") and not mine.finished
    assert [step for step, _, _ in users.points("train_loss")] == [0, 1]
    mine.finish()


@pytest.mark.integration
def test_a_fit_lands_metrics_config_and_model_in_clickhouse(sink, tmp_path: Path) -> None:
    run_id = f"lightning-{uuid.uuid4().hex[:8]}"
    logger = TrainmonLogger("frameworks", "lightning", run_id=run_id, settings=sink.settings)
    fit(logger, tmp_path)
    logger.experiment.finish()

    steps = STEPS_PER_EPOCH * EPOCHS
    points = sink.points(run_id, steps + EPOCHS)
    assert [(step, epoch) for name, step, epoch, _ in points if name == "train_loss"] == [
        (step, step // STEPS_PER_EPOCH) for step in range(steps)]
    assert [(step, epoch) for name, step, epoch, _ in points if name == "val_loss"] == [
        (STEPS_PER_EPOCH * (epoch + 1) - 1, epoch) for epoch in range(EPOCHS)]
    run = sink.run_row(run_id)
    assert run["status"] == "finished" and run["last_step"] == steps - 1
    assert run["config"] == {"hidden": 8, "lr": 0.05, "fail_at_step": None}
    assert run["model"]["parameters"] == PARAMETERS and "Linear(in_features=4" in run["model"]["summary"]


def test_a_failing_hook_warns_once_and_the_fit_goes_on(recorder: Recorder, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from trainmon import TrainmonWarning
    from trainmon.agent.integrations import safe_hooks
    from trainmon.agent.integrations.run_source import RunSource

    def broken(self: RunSource, config: object) -> None:
        raise TypeError("an hparams type this logger did not expect")

    monkeypatch.setattr(RunSource, "log_config", broken)
    monkeypatch.setattr(safe_hooks, "_warned", set())
    with pytest.warns(TrainmonWarning, match="log_hyperparams failed"):
        fit(TrainmonLogger("frameworks", publisher=recorder, heartbeat_s=60), tmp_path)
    assert len(recorder.points("train_loss")) == STEPS_PER_EPOCH * EPOCHS
