"""Custom components of the lung_nodule_ct_classification MONAI bundle (the configs live in ``configs/``)."""

__version__ = "0.41.0"
