"""The MONAI Label app over the bundle (``main.py``); it imports MONAI Label, which lives in its own
virtual environment (see bundle/docs/usage.md), except :mod:`.server`, which only starts and stops it."""
