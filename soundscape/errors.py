"""The one exception tree.

Every message says where, what, the value, what is allowed and the fix.
"""

from __future__ import annotations


class SoundscapeError(Exception):
    """Base class: an error a user can act on. The CLI prints it as ``Error: <message>``."""


class SceneError(SoundscapeError):
    """A scene file is invalid. ``lines`` holds one message per problem, each with file:line."""

    def __init__(self, lines: list[str] | str) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class GeneratorError(SoundscapeError):
    """Generation failed: audiocraft missing, model not found, out of memory."""


class ModelNotFoundError(GeneratorError):
    """The model's weights are neither local nor reachable."""


class RenderError(SoundscapeError):
    """Mixing or writing a render failed."""
