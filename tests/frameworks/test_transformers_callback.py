"""`Trainer(callbacks=[TrainmonCallback()])` on a real transformers run: a tiny BERT classifier made from
a config in the test (nothing downloaded), 6 steps of 4 samples on CPU, evaluating and saving every 3."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.frameworks.helpers import Recorder, require

torch = require("torch")
transformers = require("transformers")

from trainmon.agent.integrations.transformers_callback import TrainmonCallback  # noqa: E402

STEPS, STEPS_PER_EPOCH, EVERY = 6, 2, 3


def tiny_bert() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def train(callback: TrainmonCallback, output: Path,
          *more: transformers.TrainerCallback) -> transformers.PreTrainedModel:
    generator = torch.Generator().manual_seed(0)
    samples = [{"input_ids": torch.randint(1, 64, (8,), generator=generator),
                "attention_mask": torch.ones(8, dtype=torch.long), "labels": torch.tensor(i % 2)}
               for i in range(4 * STEPS_PER_EPOCH)]
    args = transformers.TrainingArguments(
        output_dir=str(output), max_steps=STEPS, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=1e-3, logging_steps=1, eval_strategy="steps", eval_steps=EVERY, save_strategy="steps",
        save_steps=EVERY, use_cpu=True, report_to="none", disable_tqdm=True)
    model = tiny_bert()
    transformers.Trainer(model=model, args=args, train_dataset=samples, eval_dataset=samples[:4],
                         callbacks=[callback, *more]).train()
    return model


def test_a_run_logs_arguments_model_and_each_step_with_its_fractional_epoch(recorder: Recorder, tmp_path: Path) -> None:
    model = train(TrainmonCallback("frameworks", "bert", publisher=recorder, heartbeat_s=60), tmp_path)

    assert [(step, epoch) for step, epoch, _ in recorder.points("loss")] == [
        (step, step / STEPS_PER_EPOCH) for step in range(1, STEPS + 1)]
    assert [step for step, _, _ in recorder.points("grad_norm")] == list(range(1, STEPS + 1))
    assert [(step, epoch) for step, epoch, _ in recorder.points("eval_loss")] == [(3, 1.5), (6, 3.0)]
    assert [step for step, _, _ in recorder.points("train_runtime")] == [STEPS]
    config = recorder.config()
    assert (config["learning_rate"], config["max_steps"], config["model_config"]["hidden_size"]) == (1e-3, STEPS, 16)
    summary = recorder.model()
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert "BertForSequenceClassification" in summary["class"] and "BertLayer" in summary["summary"]


def test_evaluations_and_checkpoints_inside_training_are_expected_pauses(recorder: Recorder, tmp_path: Path) -> None:
    callback = TrainmonCallback("frameworks", publisher=recorder, heartbeat_s=60)
    phase_at_step_begin = []

    class Probe(transformers.TrainerCallback):
        def on_step_begin(self, args: object, state: object, control: object, **kwargs: object) -> None:
            phase_at_step_begin.append(callback.run.current_phase)

    train(callback, tmp_path, Probe())
    assert phase_at_step_begin == [None] * STEPS, "no training step runs inside a pause"
    timeline: list[int | str] = []  # steps logged and phases announced, in the order the SDK got them
    for event in recorder.events:
        if event["kind"] in ("metrics", "heartbeat"):
            entry = event["step"] if event["kind"] == "metrics" else event.get("phase") or "train"
            if not timeline or timeline[-1] != entry:
                timeline.append(entry)
    # at steps 3 and 6 the step's loss is logged once the evaluation is announced; the last 6: the
    # Trainer's end-of-training summary
    assert timeline == [1, 2, "eval", 3, "train", "checkpoint", "train", 4, 5, "eval", 6, "train", "checkpoint",
                        "train", 6]
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_a_users_run_is_used_and_left_open(recorder: Recorder, tmp_path: Path) -> None:
    import trainmon

    run = trainmon.init("frameworks", config={"team": "nlp"}, publisher=recorder, heartbeat_s=60)
    train(TrainmonCallback(run=run), tmp_path)
    assert len(recorder.kinds("run_start")) == 1 and not recorder.kinds("run_end")
    assert recorder.config()["team"] == "nlp" and recorder.config()["max_steps"] == STEPS
    run.finish()


def test_a_config_given_to_the_callback_is_merged_over_the_trainers(recorder: Recorder, tmp_path: Path) -> None:
    train(TrainmonCallback("frameworks", config={"team": "nlp", "learning_rate": "as the user says"},
                           publisher=recorder, heartbeat_s=60), tmp_path)
    config = recorder.config()
    assert (config["team"], config["learning_rate"], config["max_steps"]) == ("nlp", "as the user says", STEPS)


@pytest.mark.integration
def test_a_run_lands_metrics_config_and_model_in_clickhouse(sink, tmp_path: Path) -> None:
    run_id = f"transformers-{uuid.uuid4().hex[:8]}"
    callback = TrainmonCallback("frameworks", "bert", run_id=run_id, settings=sink.settings)
    train(callback, tmp_path)
    callback.run.finish()

    points = sink.points(run_id, STEPS + 2)
    assert [(step, epoch) for name, step, epoch, _ in points if name == "loss"] == [
        (step, step / STEPS_PER_EPOCH) for step in range(1, STEPS + 1)]
    assert [(step, epoch) for name, step, epoch, _ in points if name == "eval_loss"] == [(3, 1.5), (6, 3.0)]
    run = sink.run_row(run_id)
    assert run["status"] == "finished" and run["last_step"] == STEPS
    assert run["config"]["learning_rate"] == 1e-3 and run["config"]["model_config"]["num_hidden_layers"] == 1
    assert "BertForSequenceClassification" in run["model"]["class"] and "BertLayer" in run["model"]["summary"]
