"""A plain torch loop with trainmon: `trainmon.torch.watch(model, optimizer)`.

A small token model on random sequences. Every 20 optimizer steps, `watch` logs the grad and update
norms, the step time, samples and tokens per second and (on a GPU) CUDA memory, off the training
thread; the loop logs its own loss at the same explicit steps. Needs torch.

    python examples/train_torch_watch.py --steps 400
"""

from __future__ import annotations

import argparse

import torch

import trainmon
import trainmon.torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 64), torch.nn.Flatten(), torch.nn.Linear(64 * 32, 1000))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with trainmon.init(project="demo", name="torch-watch", config={"batch": 32, "sequence": 32}) as run:
        watcher = trainmon.torch.watch(model, optimizer, every_n_steps=20, run=run)
        for step in range(args.steps):
            tokens = torch.randint(0, 1000, (32, 33), device=device)
            loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]), tokens[:, -1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if step % 20 == 19:
                run.log({"loss": loss.item()}, step=step)  # explicit steps, like watch's
        watcher.remove()  # before the run ends: its last report still lands


if __name__ == "__main__":
    main()
