"""Measuring a nodule: its mask and Lung-RADS axes on the scan's own voxels."""
