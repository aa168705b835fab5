"""Exit codes, and the error a start-up step raises when the server cannot start.

Strategy: a leaf module (it imports nothing of ours), so that every start-up
path -- the master, the single process on fd 0, CGI mode -- raises the same
``StartupError(reason, exit_code)`` for the same failure, and only the
command line (``cli.run``) prints it: one line on stderr, then that exit
code. gunicorn's ``errors.HaltServer`` is the model.
"""

from __future__ import annotations

EXIT_USAGE = 2  # a bad option, or options this process cannot honour (--user when not root, the app as root)
EXIT_BOOT_ERROR = 3  # cannot listen, cannot switch user, workers cannot boot
EXIT_APP_LOAD_ERROR = 4  # the app cannot be imported


class StartupError(Exception):
    """The server cannot start (or go on starting); ``exit_code`` says why, in the codes above."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
