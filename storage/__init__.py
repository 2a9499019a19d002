"""Where data lives: dataset readers, the store (an icechunk repository of Zarr arrays, on a local path or in
object storage), its layout and versions, and the weights cache.

Nothing in this package builds or runs a model.
"""
