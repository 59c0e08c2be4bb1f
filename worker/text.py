"""What "blank" means, once for the whole pipeline.

A prompt is trimmed of these characters at both ends before its length is
counted, and refused if nothing is left. The database (``public.strip_blank``,
which the HTTP functions leave the rule to) uses the same set; a test checks that
it and this module agree on every character.
"""

from __future__ import annotations

import re

# Unicode's White_Space property, plus the zero-width and format characters that
# render as nothing (Mongolian vowel separator, ZWSP, ZWNJ, ZWJ, word joiner, BOM).
BLANK_CLASS = (
    "\u0009-\u000d\u0020\u0085\u00a0\u1680\u180e\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff"
)
_EDGES = re.compile(f"^[{BLANK_CLASS}]+|[{BLANK_CLASS}]+$")


def strip_blank(text: str) -> str:
    """``text`` without blank characters at either end."""
    return _EDGES.sub("", text)
