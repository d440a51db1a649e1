"""Unwrapping user-facing errors from the wrappers Ray puts around them."""

from muxrec.errors import DataError, MuxrecError, find_muxrec_error


class Wrapper(Exception):
    def __init__(self, cause):
        super().__init__("wrapped")
        self.cause = cause


def test_innermost_muxrec_error_is_found_through_causes_and_wrappers():
    original = DataError("feature 'price': NaN")

    class DualClass(Wrapper, DataError):  # Ray's RayTaskError(DataError) subclasses both
        pass

    wrapped = DualClass(original)
    try:
        raise RuntimeError("outer") from wrapped
    except RuntimeError as outer:
        assert find_muxrec_error(outer) is original
    assert find_muxrec_error(ValueError("plain")) is None
    assert isinstance(find_muxrec_error(MuxrecError("x")), MuxrecError)
