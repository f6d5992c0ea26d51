"""One exception root for the workbench, with structured fields.

Every error says which party raised it (``party``, None for the analyst's side) and,
where one is known, how to fix it (``hint``). Errors from several parties are gathered
into one :class:`ConsortiumError`, labelled by origin.
"""

from __future__ import annotations


class PPAError(Exception):
    """Root of all workbench errors."""

    def __init__(self, message: str, *, party: str | None = None, hint: str | None = None):
        self.message = message
        self.party = party
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"[{self.party}] {self.message}" if self.party else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "party": self.party,
                "hint": self.hint}


class PlanError(PPAError):
    """The analysis plan is malformed, refers to unknown columns, or uses them wrongly."""


class PolicyRefused(PPAError):
    """A party's policy refused the plan."""


class DataError(PPAError):
    """A party's data source cannot be used (unreadable, wrong types, duplicate keys)."""


class PartyUnreachable(PPAError):
    """A party kernel could not be reached within the timeout."""


class PartyFailed(PPAError):
    """A party kernel or its MPC worker failed or died during a run."""


class RunTimeout(PPAError):
    """A run did not finish within its deadline."""


class ProtocolError(PPAError):
    """A message between client and party kernel was malformed or not authentic."""


class ReceiptError(PPAError):
    """A file of run receipts is malformed."""


class ExportError(PPAError):
    """An export folder for output checkers cannot be written as asked."""


ERROR_TYPES = {cls.__name__: cls for cls in (PPAError, PlanError, PolicyRefused, DataError,
                                             PartyUnreachable, PartyFailed, RunTimeout,
                                             ProtocolError)}


def error_from_dict(data: dict) -> PPAError:
    """Rebuild an error sent by a party kernel (unknown types become PartyFailed)."""
    cls = ERROR_TYPES.get(data.get("type", ""), PartyFailed)
    return cls(data.get("message", "unknown error"), party=data.get("party"),
               hint=data.get("hint"))


class ConsortiumError(PPAError):
    """Errors gathered from several parties, one line per origin."""

    def __init__(self, errors: list[PPAError]):
        self.errors = errors
        parties = sorted({e.party or "client" for e in errors})
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"run failed at {', '.join(parties)}:\n{lines}")

    def __str__(self) -> str:
        return self.message
