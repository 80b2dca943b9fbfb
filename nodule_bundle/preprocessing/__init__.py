"""Crops and preprocessing: filters and the bundle's MONAI transforms."""
