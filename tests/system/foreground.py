"""Start a command as a user at a terminal would: Ctrl-C (SIGINT) interrupts it.

A shell without job control starts background commands with SIGINT ignored, and
children inherit that (``bash .ci/run &``, ``nohup``): Python then never raises
KeyboardInterrupt, and a test that "presses Ctrl-C" would wait forever. Tests of
Ctrl-C behaviour start their process with SIGINT at its default.
"""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """``preexec_fn`` for :class:`subprocess.Popen`: SIGINT back to its default action."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
