"""User-facing errors: one actionable line (what, which record/field/file, how to fix).

The CLI prints these without a traceback (unless --debug); anything else is a bug and gets one.
"""


class VigosError(Exception):
    """An error the user can fix: bad input, missing file, wrong option."""
