"""Hugging Face transformers with trainmon: `Trainer(callbacks=[TrainmonCallback(...)])`.

A tiny BERT classifier made from a config (nothing is downloaded) on random token sequences, on CPU:
the TrainingArguments and model config, each logged step with its fractional epoch, the model, and
evaluations and checkpoints (as expected pauses) reach trainmon. Needs `pip install trainmon[transformers]`.

    HF_HUB_OFFLINE=1 python examples/train_transformers.py --steps 60
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from trainmon.agent.integrations.transformers_callback import TrainmonCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    tokens = torch.randint(1, 1000, (512, 32))
    samples = [{"input_ids": row, "labels": torch.tensor(int(row[0] % 2))} for row in tokens]
    with tempfile.TemporaryDirectory() as output:
        training = transformers.TrainingArguments(
            output_dir=output, max_steps=args.steps, per_device_train_batch_size=16, learning_rate=5e-4,
            logging_steps=5, eval_strategy="steps", eval_steps=20, save_steps=20, use_cpu=True, report_to="none")
        trainer = transformers.Trainer(model=model, args=training, train_dataset=samples[:448],
                                       eval_dataset=samples[448:],
                                       callbacks=[TrainmonCallback(project="demo", name="tiny-bert", tags=["example"])])
        trainer.train()


if __name__ == "__main__":
    main()
