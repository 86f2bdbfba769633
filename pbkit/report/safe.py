"""What a report shows of a record, escaped for its medium: a record is data from anywhere (another
machine's run, a pushed record), and its text fields (model, dataset and machine names, methods)
must never act as a spreadsheet formula, markdown or HTML, rich markup or a terminal escape.

- CSV: a text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
  leading ``'`` (OWASP's rule for CSV injection); numbers stay numbers;
- markdown: ``&``, ``<``, ``>`` as HTML entities and ``|`` escaped, so a row keeps its cells;
- the terminal: a rich ``Text`` (no markup is applied) with control characters (escape
  sequences) shown as ``\\x1b``-style escapes, never sent to the terminal.
"""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def visible(text: Any) -> str:
    """``text`` with control characters written as escapes and newlines as spaces."""
    s = str(text).replace("\r\n", " ").replace("\n", " ")
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode(), s)


def csv_cell(value: Any) -> Any:
    """A CSV cell: text neutralised (a formula prefix gets a leading ``'``); others as they are."""
    if not isinstance(value, str):
        return value
    text = visible(value)
    return "'" + text if text.startswith(_FORMULA) else text


def md(text: Any) -> str:
    """Text for a markdown table cell or heading: HTML escaped, pipes escaped, on one line."""
    s = visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|")


def term(text: Any, style: str = "") -> Text:
    """Text for the terminal: printed as it is (no rich markup), control characters escaped."""
    return Text(visible(text), style=style)


def markup(text: Any) -> str:
    """Text to put inside a string that rich reads as markup (a table cell with a styled part):
    its own square brackets escaped, control characters escaped."""
    from rich.markup import escape

    return escape(visible(text))
