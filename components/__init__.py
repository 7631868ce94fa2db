"""KFP components, one file per DAG step; each body only parses its inputs, calls `vigos.steps`, and writes
its outputs (artifacts, Metrics, a Markdown card for the Kubeflow UI)."""
