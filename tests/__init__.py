"""The test suite: run with `python -m pytest` from the repository root; helpers import as `tests.<module>`."""
