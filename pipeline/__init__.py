"""The ViGOS Kubeflow pipeline: DAG definition (`pipeline.pipeline`), compile, and local runs."""
