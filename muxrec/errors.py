"""Errors a user can act on. The CLI turns each into a one-line message and exit code 2."""


class MuxrecError(Exception):
    """Base class: the message names what is wrong and, where it helps, how to fix it.

    The message is kept apart from `args`: Ray Data appends its retry advice to the `args` of an
    exception raised in a task, and the user should see our one line, not three.
    """

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message  # travels with the instance's __dict__ when Ray pickles it

    def __str__(self) -> str:
        message = getattr(self, "message", None)  # wrappers built without our __init__ have none
        return message if message is not None else super().__str__()


class SpecError(MuxrecError):
    """The feature spec (YAML) is malformed or inconsistent."""


class ConfigError(MuxrecError):
    """A model, training or run config is invalid."""


class DataError(MuxrecError):
    """Input data does not match the spec: missing columns, NaN / inf, wrong types."""


class ImageError(DataError):
    """An image cannot be used: not an image, corrupt, too large, or its file is missing."""


class DataNotFoundError(MuxrecError):
    """A dataset is not on disk where muxrec looks for it."""


class ArtifactError(MuxrecError):
    """A model version is missing, incomplete or fails its manifest check."""


def find_muxrec_error(err: BaseException | None) -> MuxrecError | None:
    """The innermost MuxrecError in err's chain: Ray wraps exceptions raised in tasks and workers
    (its wrappers may themselves subclass the original), and the user wants the original message."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MuxrecError):
            found = err
        seen.add(id(err))
        # Ray's task errors carry the original exception as `.cause`.
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return found


def train_worker_error(err: BaseException) -> MuxrecError | None:
    """The MuxrecError behind a failed Ray Train run (Ray reports worker exceptions by rank), when it is not
    `err` itself: the one-line error to show the user instead of Ray's wrapper."""
    for cause in (find_muxrec_error(e) for e in [err, *getattr(err, "worker_failures", {}).values()]):
        if cause is not None and cause is not err:
            return cause
    return None
