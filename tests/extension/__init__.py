"""A user's own estimator and inner task, each one file with its registration line (the README's
worked example; tests/test_extending.py runs them through the ``meta-train`` command)."""
