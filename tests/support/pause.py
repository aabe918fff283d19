"""A callback that holds a run at a chosen optimizer step until the test lets it go, so that an outside event (a
scheduler's signal, a killed node) lands at a known step of a real run. Injected like any metric callback:
`+metrics.pause={_target_:tests.support.pause.PauseAtStep,step:3,directory:/tmp/x}` (PYTHONPATH must name the
repository root)."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

PAUSED, RELEASE = "paused", "release"


class PauseAtStep(TrainerCallback):
    """At the start of optimizer step `step` (1-based) rank 0 creates `<directory>/paused`, then waits for
    `<directory>/release`; the other ranks wait for it at the step's collectives. Once released it never holds
    again, so a resumed run that repeats the step (same command, same config) runs through."""

    def __init__(self, step: int, directory: str):
        self.step, self.directory = step, Path(directory)

    def bind(self, trainer) -> None:  # the recipe binds every metric callback to its trainer
        pass

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 != self.step or args.process_index != 0 or (self.directory / RELEASE).exists():
            return
        (self.directory / PAUSED).touch()
        while not (self.directory / RELEASE).exists():
            time.sleep(0.1)


def pause_override(step: int, directory, name: str = "pause") -> str:
    return f"+metrics.{name}={{_target_:tests.support.pause.PauseAtStep,step:{step},directory:'{directory}'}}"


def wait_for_file(path: Path, timeout: float, still_running=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or not still_running():
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.2)
