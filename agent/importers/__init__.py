"""History from other tools into trainmon: TensorBoard event files and MLflow stores.

Like the SDK and the simulator, the importers are a source of contract events (run_start with the
config, metrics with their original steps and wall times, run_end); `load` writes them with the
processors' own row builders and sink. They do not travel through Kafka: there the alert rules would
judge years-old events on today's clock and page (docs/history.md, "Why not through Kafka").
"""
