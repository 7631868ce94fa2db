"""Publish a merged model: a Hub model card (with model-index eval results), the Hub upload (or a dry run that
stages the exact folder), and an MLflow registry version with `candidate` / `champion` aliases.

    from vigos.publish.model_card import render_model_card
    from vigos.publish.hub import publish_to_hub
    from vigos.publish.registry import register_model_version

Submodules import their heavy dependencies (mlflow, huggingface_hub) inside functions.
"""
