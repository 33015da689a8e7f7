"""Writing a folder so that readers see the old one or the new one, never half of either."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replace_folder(target: Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``target`` when the block succeeds.

    Write into the yielded folder. If the block raises, the temporary folder is removed and
    an existing ``target`` stays untouched; otherwise ``target`` is swapped for it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    previous = target.with_name(f".{target.name}.old")
    try:
        yield staging
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
            target.rename(previous)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
