"""Trackers a finished run is logged to: Weights & Biases (:mod:`.wandb_sink`) and MLflow
(:mod:`.mlflow_sink`); :mod:`.config` reads the coordinator's sink configuration.

A sink takes the lm-eval results document and, when samples were logged, the per-task sample
records (lm-eval's samples JSONL schema), and is used the same way by the CLI (after
``evalfleet eval``) and by the coordinator (after a job it was asked to log).
"""
