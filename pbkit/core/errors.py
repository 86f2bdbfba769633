"""The one exception type users see: its message is printed as a single line, exit code 2."""


class PbkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


def choices_error(kind: str, value: object, choices: list[str] | tuple[str, ...]) -> PbkitError:
    """An error that names the bad value and lists the valid choices."""
    shown = ", ".join(sorted(str(c) for c in choices))
    return PbkitError(f"unknown {kind} {value!r}; choose one of: {shown}")
