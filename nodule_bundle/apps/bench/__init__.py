"""``nodule-bundle bench``: measurements against a baseline taken in the same run (medians, spread), one module a benchmark."""
