"""trainmon inside training frameworks: one small module per framework, each an optional extra.

- PyTorch Lightning: `lightning_logger.TrainmonLogger`, as `Trainer(logger=TrainmonLogger())`;
- Hugging Face transformers: `transformers_callback.TrainmonCallback`, in `Trainer(callbacks=[...])`;
- Keras 3: `keras_callback.TrainmonCallback`, in `model.fit(callbacks=[...])`;
- plain torch: `torch_watch.watch(model, optimizer)`, public as `trainmon.torch.watch`;
- alerts acting on training (early stop, save and stop on a hardware error, opt-in LR scaling):
  `lightning_alerts.TrainmonAlerts`, `transformers_alerts.TrainmonAlertsCallback`,
  `keras_alerts.TrainmonAlerts`, with `alert_flags` (ranks agree before they act).

Each imports its framework at module level, so nothing here loads with `import trainmon`. They use
only the public SDK (`trainmon.init` and `Run` methods); `run_source` says whose run they log to
and `safe_hooks` keeps a monitoring bug from reaching the training loop. See docs/integrations.md.
"""
