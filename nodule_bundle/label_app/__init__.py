"""The MONAI Label app over the bundle (``main.py``); it imports MONAI Label, which lives in its own
virtual environment (see the README), except :mod:`.server`, which only starts and stops it."""
