"""Errors a user can act on. The CLI turns each into a one-line message and exit code 2."""


class MuxrecError(Exception):
    """Base class: the message names what is wrong and, where it helps, how to fix it."""


class SpecError(MuxrecError):
    """The feature spec (YAML) is malformed or inconsistent."""


class ConfigError(MuxrecError):
    """A model, training or run config is invalid."""


class DataError(MuxrecError):
    """Input data does not match the spec: missing columns, NaN / inf, wrong types."""


class DataNotFoundError(MuxrecError):
    """A dataset is not on disk where muxrec looks for it."""


class ArtifactError(MuxrecError):
    """A model version is missing, incomplete or fails its manifest check."""


def find_muxrec_error(err: BaseException | None) -> MuxrecError | None:
    """Ray wraps exceptions raised in tasks and workers; find the user-facing one underneath."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MuxrecError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
