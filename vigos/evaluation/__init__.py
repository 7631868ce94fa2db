"""Evaluation: answer extraction, rule and LLM-judge grading, Pass@k / Avg@k metrics, scoring of responses.

Kept import-light on purpose (no torch, no math-verify, no openai here): the CLI and the KFP components import
this package; the heavy libraries load inside the functions that need them.
"""
