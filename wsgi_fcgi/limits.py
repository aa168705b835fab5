"""What the app's process is given before the app is imported (``--env``).

Strategy: ``prepare_process`` runs once, in the one start-up place every mode
goes through (``cli._start``; ``cli.check_config`` too), before the app is
imported and before the first fork. So the master with or without
``--preload``, the single process a web server spawns on fd 0 and a CGI
script get the same environment, every worker inherits it, and no worker
code and nothing per request knows about it.
"""

from __future__ import annotations

import os

from .config import Config


def prepare_process(config: Config) -> None:
    """--env, for this process and every child it forks."""
    if config.env:
        os.environ.update(config.env)
