"""The foundations: world geometry, the nodule record, errors, atomic file writing."""
