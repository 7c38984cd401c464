"""JSON from the network with a nesting limit, checked before the parser recurses.

`json.loads` recurses once per nesting level: `[[[[...]]]]` 30,000 deep raised RecursionError
(not a ValueError), which escaped the handlers as a 500. No message of this server nests more
than a few levels, so anything deeper than `MAX_DEPTH` is refused before parsing.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 16
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class JsonRefused(ValueError):
    """Not JSON, or nested deeper than the limit."""


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (strings ignored; no validation)."""
    deepest = level = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if match.group() in "[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level -= 1
    return deepest


def loads(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)`, or `JsonRefused` if it is invalid or nested over `max_depth`."""
    if depth(text) > max_depth:
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise JsonRefused(f"not valid JSON: {str(err)[:200]}") from None
