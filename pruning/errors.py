"""The one exception type prunebench raises for problems a user can fix."""


class PruneBenchError(Exception):
    """A problem with the user's input (a name, a value, a file), stated in one line.

    Command-line front ends print ``str(error)`` and exit with code 2 instead of showing a traceback.
    """


def unknown_choice(kind: str, value: str, choices) -> PruneBenchError:
    """Build the standard 'unknown X' error that names every valid choice."""
    listed = ", ".join(sorted(choices))
    return PruneBenchError(f"unknown {kind} {value!r}; choose one of: {listed}")
