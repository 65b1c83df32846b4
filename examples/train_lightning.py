"""PyTorch Lightning with trainmon: `Trainer(logger=TrainmonLogger(...))`.

A small regressor on random data, on CPU: hyperparameters, each step's metrics with its epoch, the
model and the checkpoint saves (as expected pauses) reach trainmon. Needs `pip install trainmon[lightning]`.

    python examples/train_lightning.py --epochs 5
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from trainmon.agent.integrations.lightning_logger import TrainmonLogger


class Regressor(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()  # what the logger records as the run's config
        self.net = torch.nn.Sequential(torch.nn.Linear(16, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    x = torch.randn(2048, 16)
    data = torch.utils.data.TensorDataset(x, x[:, :4].sum(dim=1, keepdim=True))
    train, val = torch.utils.data.random_split(data, [1792, 256])
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", log_every_n_steps=10,
                        logger=TrainmonLogger(project="demo", name="lightning-regressor", tags=["example"]))
    trainer.fit(Regressor(), torch.utils.data.DataLoader(train, batch_size=64, shuffle=True),
                torch.utils.data.DataLoader(val, batch_size=256))
    # The run ends with the process (finished, or crashed on an exception); trainer.test() could still log to it.


if __name__ == "__main__":
    main()
