"""Result tooling shared by the CLI and the coordinator.

- :mod:`.runs`: find and read a run's lm-eval files (results JSON, samples JSONL).
- :mod:`.stats` / :mod:`.compare`: two runs compared per task and metric, with a paired
  per-document test when both logged the same documents.
- :mod:`.plot`: metrics per task for several runs (matplotlib).
- :mod:`.report`: one self-contained, browsable HTML file (table + per-document answers).
- :mod:`.sinks`: trackers a run is logged to (Weights & Biases, MLflow).
"""
