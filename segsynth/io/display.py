"""Show untrusted text (file names, values read from files) on a terminal without letting it act.

A file name may hold any byte but ``/`` and NUL: an ANSI escape sequence in it would recolour,
move the cursor or retitle the terminal when echoed, a carriage return would overwrite the
message, a right-to-left override would reorder what is shown. Everything the CLI prints goes
through :func:`visible` (``segsynth.cli.errors`` installs it on its consoles), which writes such
characters as Python string escapes, so ``evil\\x1b[31m.png`` is shown as exactly that.
"""

from __future__ import annotations

import unicodedata

#: Line breaks and tabs of a message stay as they are; every other control character is escaped.
_KEPT = frozenset("\n\t")
#: Format characters that change the order or direction in which a terminal shows text.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown(char: str) -> str:
    if char in _KEPT or (unicodedata.category(char) != "Cc" and char not in _BIDI):
        return char
    return repr(char)[1:-1]  # '\x1b', '\r', '\u202e'


def visible(text: str) -> str:
    """``text`` with control characters (and direction overrides) written as escapes (``\\x1b``)."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_shown(char) for char in text)
