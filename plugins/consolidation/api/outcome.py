"""What an operation of the api returns: a value, the lines to print, and a failure to report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """value    small and JSON-able: what a task returns (its XCom)
    lines    what the operation has to say, in order: a task prints them, so does the CLI
    failure  a refusal found after the lines were made: a task prints the lines and then
             raises it; the CLI prints them and exits non-zero
    data     the full result, for callers that show more (the CLI's --json)
    """

    value: Any = None
    lines: list[str] = field(default_factory=list)
    failure: Exception | None = None
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.failure is None
