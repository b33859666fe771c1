"""The truncated meta-trainer: gradient estimators, workers, the outer loop and the command."""
