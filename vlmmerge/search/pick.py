"""`--pick` rules: choose one member of a front.

A rule is a comma-separated list of clauses over objective names (as in `front.json`):

    NAME >= NUMBER   (also >, <=, <, ==)   a constraint every chosen member must meet
    NAME max | NAME min                    an order: the best member by it (later ones break ties)

e.g. `"ja_caption>=40, en_caption max"`: among members with at least 40 on ja_caption, the one with
the most en_caption. Without an order clause the members are ordered by the mean of their
objectives. Values are the members' fitness-split scores (the test split is for reporting only).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vlmmerge.errors import VlmMergeError

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}
_CONSTRAINT = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|==|>|<)\s*(-?\d+(?:\.\d*)?(?:[eE]-?\d+)?)\s*$")
_ORDER = re.compile(r"^\s*([^<>=\s]+)\s+(max|min)\s*$")


@dataclass(frozen=True)
class Rule:
    constraints: tuple[tuple[str, str, float], ...]
    orders: tuple[tuple[str, str], ...]
    text: str


def parse_rule(text: str, names: Sequence[str]) -> Rule:
    constraints, orders = [], []
    for clause in (c for c in text.split(",") if c.strip()):
        if match := _CONSTRAINT.match(clause):
            name, op, value = match.group(1), match.group(2), float(match.group(3))
            constraints.append((name, op, value))
        elif match := _ORDER.match(clause):
            name = match.group(1)
            orders.append((name, match.group(2)))
        else:
            raise VlmMergeError(f"--pick: cannot read {clause.strip()!r} (use NAME>=NUMBER or 'NAME max'; "
                                f"objectives: {list(names)})")
        if name not in names:
            raise VlmMergeError(f"--pick: {name!r} is not an objective (objectives: {list(names)})")
    if not constraints and not orders:
        raise VlmMergeError("--pick: empty rule")
    return Rule(tuple(constraints), tuple(orders), text)


def pick(members: Sequence[Mapping[str, float]], rule: Rule) -> int:
    """The position of the chosen member among `members` (objective name -> value)."""
    if not members:
        raise VlmMergeError("--pick: the front is empty")
    ok = [i for i, m in enumerate(members) if all(_OPS[op](m[name], value) for name, op, value in rule.constraints)]
    if not ok:
        shown = "; ".join(", ".join(f"{k} {v:.4g}" for k, v in m.items()) for m in members)
        raise VlmMergeError(f"--pick {rule.text!r}: no front member meets the constraints (front: {shown})")

    def key(i: int):
        m = members[i]
        if not rule.orders:
            return (sum(m.values()) / len(m), -i)
        return (*[m[name] if way == "max" else -m[name] for name, way in rule.orders], -i)

    return max(ok, key=key)
