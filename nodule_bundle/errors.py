"""The project's user-facing error: bad input that the user can fix, with a message naming the file."""


class NoduleBundleError(ValueError):
    """Input that cannot be used. The message names the file (or setting) and what is wrong with it."""


def find_user_error(exc: BaseException) -> NoduleBundleError | None:
    """The :class:`NoduleBundleError` behind ``exc``, following MONAI's wrapping (``raise ... from``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, NoduleBundleError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
