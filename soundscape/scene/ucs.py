"""SFX naming: Universal Category System (UCS) file names for sound libraries.

Input: a sound's UCS fields (CatID, FXName, CreatorID, SourceID) as written in an SFX list.
Output: problems with them (for the list's validation) and the file name
``CatID_FXName_CreatorID_SourceID_UserData``, e.g. ``DOORWood_Creak Open_SNDSCP_MyGame_seed42``
(soundscape puts a variation's seed in the optional UserData block, so every variation of a
sound keeps the same SourceID).

The rules checked are UCS's own: the underscore separates the blocks and the hyphen the optional
sub-blocks (``CatID-UserCategory_VendorCategory-FXName_...``), so neither appears anywhere else;
the CatID is its category's short name in capitals followed by its subcategory (``DOORWood``,
``AMBForst``, ``UIClick``); the FXName is a short title (25 characters at most); no block holds a
character that file systems refuse. soundscape does not ship the UCS category list, so a CatID
of the right form that is not in the list is not caught here.
"""

from __future__ import annotations

import re

FXNAME_MAX = 25  # UCS: the FXName is a short title; longer text belongs in the description
ID_MAX = 32
CREATOR_DEFAULT = "SNDSCP"
# the category's short name in capitals, then the subcategory as a capitalised word
_CATID = re.compile(r"[A-Z]{2,}[A-Z][a-z][A-Za-z0-9]*")
_UNSAFE = set('/\\:*?"<>|') | {chr(c) for c in range(32)}


def _common(block: str, value: str, limit: int, fix: str = "use a space") -> str | None:
    if not value.strip():
        return f"the {block} is empty"
    for mark, what in (("_", "the blocks of a name"), ("-", "a block from its sub-block")):
        if mark in value:
            return f"{value!r} holds '{mark}', which UCS keeps for separating {what}; {fix}"
    bad = sorted(set(value) & _UNSAFE)
    if bad:
        return f"{value!r} holds {', '.join(map(repr, bad))}, which file names cannot hold"
    if value != value.strip():
        return f"{value!r} starts or ends with a space"
    if len(value) > limit:
        return (f"{value!r} is {len(value)} characters; UCS keeps the {block} to {limit} or "
                f"fewer (put more in the prompt, which goes into the description)")
    return None


def catid_problem(value: str) -> str | None:
    """Why ``value`` is not a UCS CatID, or None."""
    if not _CATID.fullmatch(value):
        return (f"{value!r} is not a UCS CatID: write the category's short name in capitals "
                f"then its subcategory, e.g. DOORWood, AMBForst or UIClick "
                f"(universalcategorysystem.com lists them)")
    return None


def fxname_problem(value: str) -> str | None:
    """Why ``value`` is not a UCS FXName, or None."""
    return _common("FXName", value, FXNAME_MAX)


def id_problem(block: str, value: str) -> str | None:
    """Why ``value`` is not a UCS CreatorID or SourceID (``block``), or None."""
    problem = _common(block, value, ID_MAX, fix="join the words, e.g. MyGame")
    if problem is None and " " in value:
        return f"{value!r} holds a space; the {block} is one word, e.g. SNDSCP or MyGame"
    return problem


def default_fxname(sound: str) -> str:
    """An FXName from a sound's name: ``creak_open`` -> ``Creak Open``."""
    return " ".join(w.capitalize() for w in re.split(r"[_\-]+", sound) if w)


def default_source(list_name: str) -> str:
    """A SourceID from a list's name: ``my_game`` -> ``MyGame``."""
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[_\-]+", list_name) if w)


def ucs_name(category: str, fxname: str, creator: str, source: str,
             user_data: str | None = None) -> str:
    """``CatID_FXName_CreatorID_SourceID``, then ``_UserData`` when given (checked: each block
    is valid)."""
    for problem in (catid_problem(category), fxname_problem(fxname),
                    id_problem("CreatorID", creator), id_problem("SourceID", source),
                    None if user_data is None else _common("UserData", user_data, ID_MAX)):
        if problem is not None:
            raise ValueError(problem)
    return f"{category}_{fxname}_{creator}_{source}" + ("" if user_data is None
                                                        else f"_{user_data}")

