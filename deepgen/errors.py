"""User-facing errors: each carries one line that names the file or field and what to do."""


class DeepgenError(Exception):
    """An error the user can fix; the CLI prints its message on one line and exits with `exit_status`:
    2 for a usage or spec error (a flag, a file argument, the wrong kind of model), 1 for a failure at run time
    (data, training, registry, cluster)."""

    exit_status = 2


class SpecError(DeepgenError):
    """A pipeline file or override is invalid."""


class DataError(DeepgenError):
    """Input data is missing, malformed or unusable."""

    exit_status = 1


class RegistryError(DeepgenError):
    """A model, version or alias cannot be found or used."""

    exit_status = 1


class TrainingError(DeepgenError):
    """Training failed in a way the user should hear about (diverged, no rows, ...)."""

    exit_status = 1


class BusyError(DeepgenError):
    """Another process holds what this one needs (a run of the same name); a failure at run time."""

    exit_status = 1


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none), for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def os_reason(e: OSError) -> str:
    """Why an OS call failed, in words (`No space left on device`)."""
    import os

    return os.strerror(e.errno) if e.errno else first_line(e)


def as_report(error: DeepgenError) -> str:
    """`ClassName: message`, for carrying an error across a process boundary as a string."""
    return f"{type(error).__name__}: {error}"


def from_report(text: str) -> DeepgenError:
    """The error `as_report` wrote (a TrainingError if the class is not one of ours)."""
    name, _, message = text.partition(": ")
    cls = {c.__name__: c for c in (SpecError, DataError, RegistryError, TrainingError, BusyError)}.get(name)
    return cls(message) if cls else TrainingError(text)
