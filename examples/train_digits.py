"""A real (small) training job instrumented with trainmon: a numpy MLP on scikit-learn's digits.

Run it as one rank, or as several (what `make demo` does): set RANK, WORLD_SIZE and a shared
TRAINMON_RUN_ID (or TORCHELASTIC_RUN_ID). Each rank trains on its own shard, like data-parallel
workers, and logs train/validation loss, accuracy, precision, recall, F1 and the learning rate.
The dataset ships inside scikit-learn (1,797 8x8 images), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from sklearn.datasets import load_digits

import trainmon
from trainmon.agent.classification import classification_metrics


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200, help="epochs (default 200)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--step-sleep", type=float, default=0.05,
                        help="seconds to pause per step, so a demo run lasts minutes (default 0.05)")
    args = parser.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    split = int(len(y) * 0.8)
    x_train, y_train = x[:split][rank::world], y[:split][rank::world]  # this rank's shard
    x_val, y_val = x[split:], y[split:]

    rng = np.random.default_rng(rank)
    w1 = rng.normal(0, 0.1, (64, args.hidden))
    w2 = rng.normal(0, 0.1, (args.hidden, 10))
    config = {"model": "mlp", "hidden": args.hidden, "lr": args.lr, "batch": args.batch, "epochs": args.epochs,
              "optimizer": "sgd", "schedule": "cosine"}
    with trainmon.init(project="demo", name="digits-mlp", config=config, tags=["demo", "numpy"]) as run:
        run.log_dataset("sklearn-digits", "1.0", rows=int(len(y)), train_rows=int(len(y_train)))
        run.log_model(summary=f"Linear(64, {args.hidden}) -> ReLU -> Linear({args.hidden}, 10)",
                      parameters=int(w1.size + w2.size))
        step = 0
        for epoch in range(args.epochs):
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
            for start in range(0, len(y_train), args.batch):
                began = time.perf_counter()
                xb, yb = x_train[start:start + args.batch], y_train[start:start + args.batch]
                hidden = np.maximum(xb @ w1, 0)
                probs = softmax(hidden @ w2)
                loss = -np.log(probs[np.arange(len(yb)), yb] + 1e-12).mean()
                grad = probs
                grad[np.arange(len(yb)), yb] -= 1
                grad /= len(yb)
                grad_hidden = (grad @ w2.T) * (hidden > 0)
                w2 -= lr * hidden.T @ grad
                w1 -= lr * xb.T @ grad_hidden
                time.sleep(args.step_sleep)
                run.log({"loss": float(loss), "lr": lr, "step_time_s": time.perf_counter() - began,
                         "samples_per_s": len(yb) / (time.perf_counter() - began)},
                        step=step, epoch=epoch + start / len(y_train))
                step += 1
            val_probs = softmax(np.maximum(x_val @ w1, 0) @ w2)
            val_loss = -np.log(val_probs[np.arange(len(y_val)), y_val] + 1e-12).mean()
            scores = classification_metrics(y_val, val_probs.argmax(axis=1), average="macro", prefix="val/")
            run.log({"val_loss": float(val_loss), **scores}, step=step - 1, epoch=epoch + 1)
    print(f"rank {rank}/{world}: val loss {val_loss:.3f}, val accuracy {scores['val/accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
