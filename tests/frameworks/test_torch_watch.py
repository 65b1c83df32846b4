"""`trainmon.torch.watch(model, optimizer)` on a real torch loop: a tiny token model, plain SGD, on CPU."""

from __future__ import annotations

import uuid

import pytest

from tests.frameworks.helpers import Recorder, require

torch = require("torch")

import trainmon  # noqa: E402
import trainmon.torch  # noqa: E402

TOKENS, BATCH, LR = 6, 4, 0.1


def token_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Flatten(), torch.nn.Linear(8 * TOKENS, 1))


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> dict[int, float]:
    """`steps` optimizer steps, each followed by an evaluation forward of another size; the global
    grad norm each step applied, computed here independently."""
    generator = torch.Generator().manual_seed(0)
    applied = {}
    for step in range(steps):
        model.train()
        tokens = torch.randint(0, 50, (BATCH, TOKENS), generator=generator)
        loss = torch.nn.functional.mse_loss(model(tokens), tokens.float().mean(dim=1, keepdim=True) / 50)
        optimizer.zero_grad()
        loss.backward()
        applied[step] = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            model(torch.randint(0, 50, (3 * BATCH, TOKENS), generator=generator))  # not training throughput
    return applied


def test_every_n_steps_it_logs_norms_step_time_and_throughput(recorder: Recorder) -> None:
    model = token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    watcher = trainmon.torch.watch(model, optimizer, every_n_steps=5, project="frameworks", publisher=recorder,
                                   heartbeat_s=60)
    applied = train(model, optimizer, 20)
    watcher.remove()

    reports = recorder.kinds("metrics")
    assert [e["step"] for e in reports] == [4, 9, 14, 19]
    for report in reports:
        values = report["values"]
        assert values["grad_norm"] == pytest.approx(applied[report["step"]], rel=1e-5)
        assert values["update_norm"] == pytest.approx(LR * values["grad_norm"], rel=1e-4), "plain SGD moves lr * grad"
        assert values["step_time_s"] > 0
        assert values["samples_per_s"] * values["step_time_s"] == pytest.approx(BATCH), "training samples only"
        assert values["tokens_per_s"] == pytest.approx(TOKENS * values["samples_per_s"])
        assert not [name for name in values if name.startswith("cuda_")], "CUDA never initialised on CPU"
    config = recorder.config()
    assert (config["optimizer"], config["lr"]) == ("torch.optim.sgd.SGD", LR)
    assert recorder.model()["parameters"] == sum(p.numel() for p in model.parameters())


def test_without_update_norm_and_after_remove(recorder: Recorder) -> None:
    model = token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    run = trainmon.init("frameworks", publisher=recorder, heartbeat_s=60)
    watcher = trainmon.torch.watch(model, optimizer, every_n_steps=2, update_norm=False, run=run)
    train(model, optimizer, 4)
    watcher.remove()
    assert not model._forward_pre_hooks and not optimizer._optimizer_step_pre_hooks, "hooks taken off"
    assert not optimizer._optimizer_step_post_hooks
    train(model, optimizer, 4)  # nothing more

    assert [e["step"] for e in recorder.kinds("metrics")] == [1, 3]
    assert all("update_norm" not in e["values"] and "grad_norm" in e["values"] for e in recorder.kinds("metrics"))
    assert len(recorder.kinds("run_start")) == 1 and not run.finished, "the user's run, left to the user"
    run.finish()


def test_a_bad_interval_is_refused_at_once(recorder: Recorder) -> None:
    model = token_model()
    with pytest.raises(ValueError, match="every_n_steps"):
        trainmon.torch.watch(model, torch.optim.SGD(model.parameters(), lr=LR), every_n_steps=0, publisher=recorder)


@pytest.mark.integration
def test_the_figures_land_in_clickhouse(sink) -> None:
    run_id = f"torch-watch-{uuid.uuid4().hex[:8]}"
    model = token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    watcher = trainmon.torch.watch(model, optimizer, every_n_steps=5, project="frameworks", run_id=run_id,
                                   settings=sink.settings)
    train(model, optimizer, 10)
    watcher.remove()
    watcher.run.finish()

    names = ("grad_norm", "samples_per_s", "step_time_s", "tokens_per_s", "update_norm")
    points = sink.points(run_id, 2 * len(names))
    assert sorted({name for name, *_ in points}) == list(names)
    assert sorted({step for _, step, _, _ in points}) == [4, 9]
    assert sink.run_row(run_id)["config"]["optimizer"] == "torch.optim.sgd.SGD"


def test_on_a_cuda_rank_its_memory_figures_come_along(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: torch.cuda's host-side counters stand in, to check what is read and how it is named."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 << 20)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 4 << 20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5 << 20)
    model = token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    watcher = trainmon.torch.watch(model, optimizer, every_n_steps=2, publisher=recorder, heartbeat_s=60)
    train(model, optimizer, 2)
    watcher.remove()
    (report,) = recorder.kinds("metrics")
    assert {name: value for name, value in report["values"].items() if name.startswith("cuda_")} == {
        "cuda_memory_allocated_bytes": 3 << 20, "cuda_memory_reserved_bytes": 4 << 20,
        "cuda_memory_peak_bytes": 5 << 20}
