"""wsq's benchmark: a load generator, baselines, the Django Channels peer and the runner.

Run from the repository root: ``.venv/bin/python -m bench roundtrip`` (see bench/README.md).
"""
