"""Whether output goes to a terminal: progress bars there, plain lines in logs and files."""

from __future__ import annotations

import sys


def output_is_terminal() -> bool:
    """Whether stdout and stderr both go to a terminal (a bar would be redrawn in place).

    False under CI, ``nohup``, ``dvc queue`` and any redirection of either stream to a file or pipe.
    """
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))
