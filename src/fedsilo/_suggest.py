"""What to say of a name fedsilo does not know: the known name it most likely mistypes.

Wherever a person names something (a spec key, a silo, a dataset, an example, a strategy,
a compute kind) and fedsilo finds no such thing, the error says what was asked for, the
closest known name (``did you mean 'train'?``) when one is close enough to be a typo, and
the known names. These functions build the last two parts, so that every such message
reads the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["CUTOFF", "closest", "did_you_mean", "listing"]

CUTOFF = 0.6
"""How alike (difflib's ratio, 0 to 1) a known name must be to be suggested."""
_LONGEST = 200  # a text longer than this is no typo of a name


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name that ``name`` most likely mistypes, or ``None`` when none is close.

    Names are compared without regard to case, so a name written in other capitals is
    always found. When several known names are equally close (``silo-z`` to ``silo-a``
    and ``silo-b``), none is more likely than the others, and none is suggested.
    """
    if len(name) > _LONGEST:
        return None
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(name.casefold())
    best: list[str] = []
    score = CUTOFF
    for option in dict.fromkeys(known):
        matcher.set_seq1(option.casefold())
        if matcher.real_quick_ratio() < score or matcher.quick_ratio() < score:
            continue
        ratio = matcher.ratio()
        if ratio > score or (ratio == score and not best):
            best, score = [option], ratio
        elif ratio == score and option.casefold() != best[0].casefold():
            best.append(option)
    return best[0] if len(best) == 1 else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest known name, or ``""`` when none is close."""
    match = closest(name, known)
    return "" if match is None else f" (did you mean '{match}'?)"


def listing(known: Iterable[str], *, limit: int = 400) -> str:
    """The known names in the order given, separated by commas, in about ``limit``
    characters at most (then ``and N more``); ``none`` when there are none."""
    names = list(known)
    shown: list[str] = []
    used = 0
    for name in names:
        if shown and used + len(name) + 2 > limit:
            break
        shown.append(name)
        used += len(name) + 2
    if not shown:
        return "none"
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
