"""The errors the library raises for what a user gave it; the tools turn them into one line.

A message names the settings it is about with `setting("batch_size")`, not as a flag: the library does
not know how its caller spells them. `str(error)` shows the setting's name ("batch_size must be >= 1");
a command-line tool shows its flag instead (`error.render(lambda name: "--" + name)`).
"""

from __future__ import annotations

import re
from typing import Callable

# A setting's name between two private-use characters: nothing a user types, and never shown.
_OPEN, _CLOSE = "\ue000", "\ue001"
_REFERENCE = re.compile(f"{_OPEN}([A-Za-z_][A-Za-z0-9_]*){_CLOSE}")


def setting(name: str) -> str:
    """A reference to setting `name` inside an error message (see the module docstring)."""
    return f"{_OPEN}{name}{_CLOSE}"


class UserError(Exception):
    """A problem with what the user gave us (a file, a setting, a prompt), said in one line.

    The CLIs print it as a single line on stderr and exit non-zero; it never becomes a traceback.
    """

    @property
    def message(self) -> str:
        """The message with its setting references still in it."""
        return str(self.args[0]) if self.args else ""

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with each setting spelled by `spell` (a tool: its flag)."""
        return _REFERENCE.sub(lambda match: spell(match.group(1)), self.message)

    def __str__(self) -> str:
        return self.render(lambda name: name)

    def prefixed(self, prefix: str) -> "UserError":
        """The same error, its message after `prefix` (where it came from), references kept."""
        return type(self)(prefix + self.message)
