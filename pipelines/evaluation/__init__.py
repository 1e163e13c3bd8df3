"""Evaluation: metrics, significance, fairness, explanations, the report and its plots, load checks."""
