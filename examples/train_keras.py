"""Keras 3 with trainmon: `model.fit(..., callbacks=[TrainmonCallback(...)])`, on any backend.

A small regressor on random data: fit's settings, the optimizer's config, each batch's metrics at
its global step and fractional epoch, each epoch's validation metrics and `model.summary()` reach
trainmon. Needs `pip install trainmon[keras]` and a backend (`jax[cpu]`, torch or tensorflow).

    KERAS_BACKEND=jax python examples/train_keras.py --epochs 5
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from trainmon.agent.integrations.keras_callback import TrainmonCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(2048, 16)).astype("float32")
    y = x[:, :4].sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    model.fit(x, y, batch_size=64, epochs=args.epochs, validation_split=0.125, verbose=0,
              callbacks=[TrainmonCallback(project="demo", name=f"keras-{keras.backend.backend()}", tags=["example"])])


if __name__ == "__main__":
    main()
