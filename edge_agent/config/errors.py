"""What is wrong with a configuration: each problem names its key path, the value found and what belongs there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where, what was there, what belongs there."""

    path: str  # key path such as "mqtt.port" or "sources[0].fields[1]"; the file name for file-level problems
    value: str  # repr of the offending value, or a description where the value must not be shown
    expected: str
    origin: str | None = None  # the env variable or --set that supplied the value, when not the file

    def __str__(self) -> str:
        line = f"{self.path}: got {self.value}, expected {self.expected}"
        return f"{line} (set by {self.origin})" if self.origin else line


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists everything wrong with it, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)

