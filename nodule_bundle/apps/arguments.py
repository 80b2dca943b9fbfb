"""Argument types the command line shares: positive integers and config overrides."""

from __future__ import annotations

import argparse
import json


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def config_override(text: str) -> tuple[str, object]:
    """``ID=JSON`` (``loss#rating_weight=1.0``, ``patch_spacing_mm=0.9``) as a config override."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ID=JSON, e.g. epochs=60")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value {value!r} is not JSON (a string needs quotes: key='\"text\"')") from None
