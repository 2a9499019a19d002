"""The one error a weights fetch raises."""


class WeightsError(RuntimeError):
    """A checkpoint could not be had: unknown name, offline without a cached copy, or every source failed.

    The message names the checkpoint, every source tried and why each failed.
    """
