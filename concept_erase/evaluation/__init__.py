"""Evaluation: batch generation, concept classifiers, FID/KID, robustness attacks and reports."""
