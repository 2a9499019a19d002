"""Progress of a long stage: a bar in the terminal and a progress artifact in the Prefect UI."""

from __future__ import annotations

import sys

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from tqdm.auto import tqdm


class StageProgress:
    """Counts processed images (or other ``unit``s) of one stage; ``advance(n)`` after each unit of work."""

    def __init__(self, stage: str, total: int, unit: str = "img", what: str = "images processed") -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self._bar = tqdm(total=total, desc=stage, unit=unit, disable=not sys.stderr.isatty(), leave=False)
        self._artifact = None
        if FlowRunContext.get() is not None:
            self._artifact = create_progress_artifact(
                progress=0.0, key=f"progress-{stage}", description=f"{stage}: {what} (%)"
            )

    def advance(self, n: int) -> None:
        self.done += n
        self._bar.update(n)
        if self._artifact is not None:
            update_progress_artifact(self._artifact, progress=100.0 * min(self.done, self.total) / self.total)

    def close(self) -> None:
        self._bar.close()
        if self._artifact is not None:
            update_progress_artifact(self._artifact, progress=100.0)

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
