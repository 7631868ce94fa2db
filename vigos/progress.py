"""Plain progress lines for logs (a pod log or a file gets nothing readable from tqdm's \\r redraws)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """`2h05m` / `4m07s`: how long something took or has left, at a glance."""
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
