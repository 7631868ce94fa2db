"""What a rule grader returns: the grade and the name of the rule that decided it (so a disagreement with a person
or a judge can be traced to one rule)."""

from __future__ import annotations

from typing import NamedTuple


class RuleVerdict(NamedTuple):
    correct: bool
    rule: str
    """`<module>.<step>`, e.g. `choice.letter`, `numeric.value`, `math.verify`, `reference.any_of`."""
