"""Warnings: one typed record for everything a render adjusted or wants the user to know.

Every stage returns its warnings as ``RenderWarning`` values; ``render`` collects them in one list
per scene, the CLI prints them and the manifest stores them. When a value was adjusted the record
carries the old value, the limit and the new value (scaper's habit), so tools can read them
without parsing the message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Stage = Literal["scene", "takes", "cache", "generate", "arrange", "mix", "master", "render"]


@dataclass(frozen=True)
class RenderWarning:
    """One warning: which stage raised it, about which element (if any), and what it says."""

    stage: Stage
    message: str
    element: str | None = None
    old: float | None = None
    limit: float | None = None
    new: float | None = None

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderWarning:
        return cls(data["stage"], data["message"], data.get("element"), data.get("old"),
                   data.get("limit"), data.get("new"))
