"""Launching: local and batch-system clusters (dask-jobqueue), device placement, and the ``coupler`` CLI."""
