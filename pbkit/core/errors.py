"""The one exception type users see: its message is printed as a single line, exit code 2."""


class PbkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


def choices_error(kind: str, value: object, choices: list[str] | tuple[str, ...]) -> PbkitError:
    """An error that names the bad value and lists the valid choices."""
    shown = ", ".join(sorted(str(c) for c in choices))
    return PbkitError(f"unknown {kind} {value!r}; choose one of: {shown}")


def first_line(e: BaseException, limit: int | None = None) -> str:
    """``Type: the first line of its message``: how an unexpected error is told in one line (cut
    at ``limit`` characters with an ellipsis only where a caller stores it in a bounded field)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    if limit is not None and len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return f"{type(e).__name__}: {line}" if line else type(e).__name__
