"""The demo's training job: a Keras 3 MLP on scikit-learn's digits, logged and steered by trainmon.

`TrainmonCallback` logs each batch and epoch (loss, accuracy, macro F1 and their `val_` forms, the
fit's settings, `model.summary()`); `TrainmonAlerts` closes the loop: a NaN loss, overfitting or a
plateau alert stops the fit early, a hardware error saves the model and stops. Run it as one rank or
as several (what `make demo` does): set RANK, WORLD_SIZE and a shared TRAINMON_RUN_ID. Each rank
trains on its own shard, like data-parallel workers. JAX is the default backend (the lightest);
KERAS_BACKEND=torch or tensorflow work too. The data set ships inside scikit-learn.

    python examples/train_digits_keras.py --epochs 50
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import trainmon  # noqa: E402
from trainmon.agent.integrations.keras_alerts import TrainmonAlerts  # noqa: E402
from trainmon.agent.integrations.keras_callback import TrainmonCallback  # noqa: E402


class Pace(keras.callbacks.Callback):
    """Sleeps after each batch, so that a demo run on 1,800 images lasts minutes, not seconds."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        time.sleep(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200, help="epochs at most (default 200)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate, cosine decay (default 0.05)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--step-sleep", type=float, default=0.05,
                        help="seconds to pause per step, so a demo run lasts minutes (default 0.05)")
    args = parser.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], keras.utils.to_categorical(y[order], 10)
    split = int(len(y) * 0.8)
    x_train, y_train = x[:split][rank::world], y[:split][rank::world]  # this rank's shard
    x_val, y_val = x[split:], y[split:]

    keras.utils.set_random_seed(rank)
    steps = args.epochs * -(-len(y_train) // args.batch)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(args.hidden, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
                  loss="categorical_crossentropy", metrics=["accuracy", keras.metrics.F1Score(average="macro")])
    with trainmon.init(project="demo", name="digits-keras", tags=["demo", "keras", keras.backend.backend()],
                       config={"hidden": args.hidden, "lr": args.lr, "schedule": "cosine"}) as run:
        run.log_dataset("sklearn-digits", "1.0", rows=int(len(y)), train_rows=int(len(y_train)))
        history = model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs,
                            validation_data=(x_val, y_val), verbose=0,
                            callbacks=[TrainmonCallback(run=run), TrainmonAlerts(run), Pace(args.step_sleep)])
        why = f"stopped by trainmon alert {run.stop_reason.get('rule')}" if isinstance(run.stop_reason, dict) else "done"
    print(f"rank {rank}/{world}: {len(history.history['loss'])} epochs ({why}), "
          f"val loss {history.history['val_loss'][-1]:.3f}, val accuracy {history.history['val_accuracy'][-1]:.3f}",
          flush=True)


if __name__ == "__main__":
    main()
