"""systemd unit files (examples/systemd/) read the way the tests need them.

``unit_section(path, "Service")`` -> {key: [values]}: keys may repeat
(``ListenStream=`` twice is two sockets), comments and blank lines are
skipped. Enough for the keys the examples use; not a full unit parser
(no line continuations, no specifiers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List


def unit_section(path: Path, section: str) -> Dict[str, List[str]]:
    """``[section]`` of the unit file at ``path`` as {key: [values]}."""
    current, values = None, {}  # type: ignore[var-annotated]
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values
