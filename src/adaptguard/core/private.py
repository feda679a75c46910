"""Owner-only files: secrets (keys, triggers, masks, key seeds) are never readable by other users.

Files are created 0600 from their first byte (not chmod-ed after writing), folders 0700.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def private_file(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary writing, mode 0600 even if it existed with another mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def make_private(folder: str | Path) -> None:
    """Everything under ``folder`` (and the folder) readable by the owner only."""
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o700)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            os.chmod(os.path.join(root, name), 0o600)
