"""Evaluation: metrics, calibration, figures and the engine handlers."""
