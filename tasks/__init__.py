"""What is computed: pure functions and small classes over numpy and torch arrays.

Nothing in this package imports Prefect or Zarr or touches file paths; flows wire it to storage.
"""
