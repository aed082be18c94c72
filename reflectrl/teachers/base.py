"""The Teacher interface: writes the reflections of the SFT warm-up data.

A teacher sees privileged facts of a state (the next good action among them) and writes the
analysis a reflection model should learn to produce from the observation alone. Requests come in
batches because a network teacher (an LLM behind an API) is much cheaper per call that way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reflectrl.errors import ReflectRLError


@dataclass
class Mistake:
    """A negative example: the wrong action that was just taken."""

    action: str
    """Text of the wrong action (as listed in the state's ``valid_actions``)."""
    facts_before: dict[str, Any]
    """Privileged facts of the state the wrong action was taken in."""


@dataclass
class ReflectionRequest:
    """One state to write a reflection for."""

    observation: str
    """The observation text the reflection model will read."""
    facts: dict[str, Any]
    """Privileged facts of this state (``env.unwrapped.privileged_facts()``), incl. the next good action."""
    mistake: Mistake | None = None
    """Set for a negative example: the reflection must explain why this action was wrong."""


class TeacherError(ReflectRLError):
    """Some reflections of a batch could not be written (e.g. the server kept failing).

    ``partial`` holds the reflections that were written (None where one failed), so a caller can
    keep them; the message is one line naming how many failed and why.
    """

    def __init__(self, message: str, partial: Sequence[str | None]) -> None:
        super().__init__(message)
        self.partial = list(partial)


class Teacher(ABC):
    """Writes one reflection per request (one line of text, never revealing the privileged facts)."""

    @abstractmethod
    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
        """Return one reflection per request, in the same order.

        Raises:
            TeacherError: when some requests failed; its ``partial`` has the ones that did not.
        """

    def close(self) -> None:
        """Release what the teacher holds (network clients, progress bars) and report usage.

        Called by the data generator when it is done with the teacher (also after an error).
        A no-op by default: an offline teacher holds nothing.
        """
        return None
