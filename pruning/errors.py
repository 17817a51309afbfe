"""The one exception type prunebench raises for problems a user can fix."""


class PruneBenchError(Exception):
    """A problem with the user's input (a name, a value, a file), stated in one line.

    Command-line front ends print ``str(error)`` and exit with code 2 instead of showing a traceback.
    """


def unknown_choice(kind: str, value: str, choices) -> PruneBenchError:
    """Build the standard 'unknown X' error that names every valid choice."""
    listed = ", ".join(sorted(choices))
    return PruneBenchError(f"unknown {kind} {value!r}; choose one of: {listed}")


def one_line(message: object) -> str:
    """A message as one line: its lines joined with '; ' (never fails on an empty message)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) or type(message).__name__


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when the message is empty."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def mismatch_reason(error: RuntimeError, limit: int = 300) -> str:
    """The first concrete problem of a ``load_state_dict`` error (its first line only names the model class)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else (lines or [""])[0]
    return reason if len(reason) <= limit else reason[:limit] + " ..."
