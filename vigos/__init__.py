"""ViGOS: Visual Grounding On-Policy Self-Distillation for Qwen2.5-VL."""

__version__ = "0.1.0"
