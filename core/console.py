"""What every console script shows: a user error as one message on stderr, quiet logs, unexpected errors in full.

A user error is something the person running the command can fix without reading code: a bad record
(`DataError`), a config that cannot work (`ConfigError`, an unknown key or group, a `_target_` that does not
import), a model that cannot be loaded, a resume path without a checkpoint. It prints
`<script>: error: <message>` once (rank 0 under torchrun) and exits with `USER_ERROR_STATUS`; torchrun then stops
the other ranks (a rank whose error rank 0 did not share reports it itself). Anything else keeps its traceback, and `HYDRA_FULL_ERROR=1`
shows the traceback for user errors too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
import warnings
from typing import Callable

import hydra
from hydra.errors import CompactHydraException, InstantiationException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from xmodal.core.errors import NOT_IMPORTABLE_HINT, ConfigError, DataError
from xmodal.core import distributed

USER_ERROR_STATUS = 2  # 1 stays Python's status for an unexpected error (a traceback)
OTHER_RANKS_WAIT_S = 10.0
_FULL_ERROR = "HYDRA_FULL_ERROR"


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


# Messages a user cannot act on, by the logger that emits them. DeepSpeed guesses its accelerator whenever it is
# imported (the Trainer imports it in every run) and warns on a machine without GPU.
_QUIET_LOGS = {
    "DeepSpeed": _DropMessages("Setting accelerator to CPU"),
    "transformers.trainer_utils": _DropMessages("mtime may not be reliable on this filesystem"),
}
_QUIET_WARNINGS = (
    r"'pin_memory' argument is set as true but no accelerator is found",  # the Trainer's default, on CPU
    r"`is_gradient_checkpointing` is deprecated",  # PEFT calls the old name
    r"`torch.distributed.all_gather_into_tensor` is deprecated",  # DeepSpeed ZeRO calls the old name
)


def user_error_message(error: BaseException) -> str | None:
    """The message of a user error (following `raise ... from` causes), or None for an unexpected error."""
    link: BaseException | None = error
    seen = set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, (DataError, ConfigError)):
            return str(link)
        if isinstance(link, InstantiationException):
            if str(link).startswith("Error locating target"):
                return f"{str(link).split(', set env var', 1)[0]}: {NOT_IMPORTABLE_HINT}"
        elif isinstance(link, CompactHydraException):  # a config that does not compose: unknown key, group, option
            cause = link.__cause__
            detail = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
            where = f"{link.override}: " if isinstance(link, OverrideParseException) else ""  # the bad argument
            # Hydra lists its search path after the options of a missing group option: internals, not advice.
            return f"{where}{link}{detail}".split("\nConfig search path:", 1)[0].strip()
        link = link.__cause__
    return None


def _wants_traceback() -> bool:
    return os.environ.get(_FULL_ERROR, "") not in ("", "0")


def _exit_on_user_error(script: str, error: Exception, show_traceback: bool) -> None:
    message = None if show_traceback else user_error_message(error)
    if message is None:
        return
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        # Every rank usually meets the same error: rank 0 reports it, exits, and torchrun then stops this rank
        # while it waits. A rank still here afterwards met an error of its own and reports it itself.
        time.sleep(OTHER_RANKS_WAIT_S)
        message = f"[rank {rank}] {message}"
    sys.stderr.write(f"{script}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(USER_ERROR_STATUS) from None


def quiet_known_messages() -> None:
    """Filter the log lines and warnings listed above (before the libraries emitting them are imported)."""
    for logger_name, message_filter in _QUIET_LOGS.items():
        logging.getLogger(logger_name).addFilter(message_filter)  # once: a logger keeps one copy of a filter
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def _hydra_raises():
    """Let Hydra raise composition errors instead of printing them, so they are reported here like the rest."""
    previous = os.environ.get(_FULL_ERROR)
    os.environ[_FULL_ERROR] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_FULL_ERROR]
        else:
            os.environ[_FULL_ERROR] = previous


def console_script(script: str) -> Callable:
    """Decorate a plain console script's `main`: quiet logs, a user error in one line."""

    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(*args, **kwargs):
            quiet_known_messages()
            try:
                return main(*args, **kwargs)
            except Exception as error:
                _exit_on_user_error(script, error, show_traceback=_wants_traceback())
                raise

        return run

    return decorate


def hydra_console_script(
    script: str, task: Callable, config_path: str, config_name: str, distributed_launch: bool = False,
    check: Callable | None = None,
) -> Callable[[], None]:
    """The console script that composes `config_name` with the command line and runs `task(cfg)`, after
    `check(cfg)` (the typed schema of the composed config: a typo stops the command before anything runs).

    User errors from composition and from the task are one line; Hydra's "Error executing job" line and traceback
    appear for unexpected errors (and for all with HYDRA_FULL_ERROR=1). `distributed_launch`: a script that
    torchrun or the deepspeed launcher starts; the launcher's `--local_rank` argument moves to LOCAL_RANK, and the
    process group is torn down after the task (a deliberate SystemExit included) unless it raised an error: then
    a rank exits at once instead of waiting for ranks that may never arrive (torchrun stops them).
    """
    cleanup = distributed.teardown if distributed_launch else None
    show_traceback = False

    @functools.wraps(task)
    def guarded_task(*composed):  # Hydra's composed config, handed on to the task unread
        failed = False
        try:
            if check is not None:
                check(*composed)
            return task(*composed)
        except Exception as error:  # exit here: Hydra prints "Error executing job" for what leaves the task
            failed = True
            _exit_on_user_error(script, error, show_traceback)
            raise
        finally:
            if cleanup is not None and not failed:
                cleanup()

    hydra_main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(guarded_task)

    def main() -> None:
        nonlocal show_traceback
        show_traceback = _wants_traceback()
        if distributed_launch:
            sys.argv = distributed.strip_local_rank_argument(sys.argv)
        quiet_known_messages()
        # As with `python -m`, modules in the working directory import (a custom loss term's my_terms.py, named by
        # `_target_`); appended, so such a file never shadows an installed package.
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            with _hydra_raises():
                hydra_main()
        except Exception as error:
            _exit_on_user_error(script, error, show_traceback)
            raise

    return main


def progress_bar(iterable, description: str, total: int | None = None):
    """`iterable` behind a tqdm bar on stderr, on HF's terms: transformers' `disable_progress_bar()` (or
    HF_HUB_DISABLE_PROGRESS_BARS=1) hides it, and so do logs quieter than warnings (TrainingArguments' disable_tqdm
    default). The bar is cleared when the loop ends; the log lines say what it produced."""
    from transformers.utils import logging as hf_logging

    quiet = logging.getLogger("xmodal").getEffectiveLevel() > logging.WARN
    return hf_logging.tqdm(iterable, desc=description, total=total, disable=quiet, leave=False)


def run_summary(log_history: list[dict], global_step: int, output_dir: str, final_dir: str, seconds: float) -> str:
    """The lines a training run ends with: steps, the last logged loss terms, where its outputs are, wall time."""
    last = next((record for record in reversed(log_history) if "loss" in record), None)
    losses = ""
    if last is not None:
        terms = [f"{name} {value:.4g}" for name, value in last.items() if name == "loss" or name.endswith("_loss")]
        losses = f"; step {last.get('step', global_step)}: {', '.join(terms)}"
    minutes, rest = divmod(seconds, 60)
    duration = f"{int(minutes)} min {rest:.0f} s" if minutes else f"{rest:.1f} s"
    return (
        f"done: {global_step} steps in {duration}{losses}\n"
        f"  final model: {final_dir}\n"
        f"  metrics:     {os.path.join(output_dir, 'metrics.jsonl')}"
    )
