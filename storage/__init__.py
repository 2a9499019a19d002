"""Where data lives: dataset readers, the Zarr store layout, versions and the weights cache.

Nothing in this package builds or runs a model.
"""
