"""Profiling scripts, run from the repository root as `python -m profiles.<script>`, and their measured numbers."""
