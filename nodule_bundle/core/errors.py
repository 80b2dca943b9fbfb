"""The project's user-facing error: bad input that the user can fix, with a message naming the file."""


class NoduleBundleError(ValueError):
    """Input that cannot be used. The message names the file (or setting) and what is wrong with it."""


def require_yes_no(value: object, option: str) -> bool:
    """``value`` if it is True or False. MONAI's command line (python-fire) reads ``--option false`` as
    the text "false", which Python counts as true, so text is refused rather than taken as yes."""
    if not isinstance(value, bool):
        raise NoduleBundleError(f"{option} must be True or False, got {value!r} (on the command line write --{option} True or False)")
    return value


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
