"""The lifecycle rules that can be checked at teardown, by number (standard library only).

Apart from :mod:`pytest_leanhost.client.contract`, which checks them, so that
validating ``leanhost_contract_rules`` at configure loads nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = ["ALL_RULES", "Rule", "parse_rules"]

Rule = Literal[1, 2, 3, 5, 6]
ALL_RULES: tuple[Rule, ...] = (1, 2, 3, 5, 6)


def parse_rules(value: str | Iterable[int] | None) -> tuple[Rule, ...]:
    """``None``/``"all"``: every rule; ``"none"``: none; numbers (``"1,5"`` or ints): those.

    Raises ``ValueError`` with one line for anything else.
    """
    if value is None:
        return ALL_RULES
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "all"):
            return ALL_RULES
        if text == "none":
            return ()
        parts: list[object] = [p for p in text.replace(",", " ").split() if p]
    else:
        parts = list(value)
    chosen: list[Rule] = []
    for part in parts:
        try:
            number = int(str(part))
        except ValueError:
            raise ValueError(f"rule {part!r} is not a number, 'all' or 'none'") from None
        if number not in ALL_RULES:
            raise ValueError(
                f"rule {number} is not checked at teardown (choose from "
                f"{', '.join(map(str, ALL_RULES))}, 'all' or 'none')"
            )
        rule: Rule = number
        if rule not in chosen:
            chosen.append(rule)
    return tuple(sorted(chosen))
