"""Progress bars of the long loops (xmodal-eval's answers, xmodal-imbalance's probes): on stderr, on HF's terms."""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging

from xmodal.core.console import progress_bar


def test_a_bar_counts_the_loop_on_stderr(capsys):
    assert list(progress_bar(range(3), "answering run/final")) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout carries what a command prints for pipes (results.md)
    assert "answering run/final" in captured.err and "0/3" in captured.err  # cleared once done (leave=False)


def test_transformers_switch_and_quiet_logs_hide_it(capsys):
    hf_logging.disable_progress_bar()
    try:
        assert list(progress_bar(range(3), "hidden by transformers")) == [0, 1, 2]
    finally:
        hf_logging.enable_progress_bar()
    xmodal_logger = logging.getLogger("xmodal")
    level = xmodal_logger.level
    xmodal_logger.setLevel(logging.ERROR)
    try:
        assert list(progress_bar(range(3), "hidden by quiet logs")) == [0, 1, 2]
    finally:
        xmodal_logger.setLevel(level)
    assert "hidden" not in capsys.readouterr().err
