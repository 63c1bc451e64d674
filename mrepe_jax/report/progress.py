"""The stage bar of a run (a side effect at the edge): one tqdm bar over an experiment's stages
that names the stage now running, so that the stretches between inner bars (map fits, training,
sweeps) say where the run is, and each stage's wall time for results.json."""

from __future__ import annotations

import time
from collections.abc import Sequence

from tqdm.auto import tqdm


class StageBar:
    """``with StageBar(names, "default world", progress) as bar: bar.start("reading"); ...``;
    ``start`` closes the previous stage's clock and moves the bar past it; ``seconds`` holds each
    finished stage's wall time. A name outside ``names`` is refused (the bar's total would lie)."""

    def __init__(self, names: Sequence[str], label: str = "", progress: bool = True):
        self.names, self.label = list(names), label
        self.bar = tqdm(total=len(self.names), desc=label or "stages", unit="stage",
                        disable=not progress, dynamic_ncols=True)
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        if name not in self.names:
            raise ValueError(f"stage {name!r} is not among the stages announced: {self.names}")
        self._finish()
        self.bar.set_description(f"{self.label}: {name}" if self.label else name)
        self._current = (name, time.perf_counter())

    def _finish(self) -> None:
        if self._current is not None:
            name, t0 = self._current
            self.seconds[name] = round(time.perf_counter() - t0, 1)
            self.bar.update(1)
            self._current = None

    def __enter__(self) -> StageBar:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:  # a failed stage keeps its name on the bar and gets no time
            self._finish()
            self.bar.set_description(f"{self.label}: done" if self.label else "done")
        self.bar.close()
