"""Files the engine writes: whole or not at all (atomic_write), under names made from run ids
and other free text (safe_name)."""
from __future__ import annotations

import os
import re
from pathlib import Path


def atomic_write(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file beside it, then rename it into
    place: a reader sees the old file or the new one, never a part. The temporary name is
    hidden and per process, so two writers of the same file do not share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def safe_name(text: str, *, keep: str = "._-", strip: str = "_", empty: str = "run") -> str:
    """`text` as one file name: every run of characters other than ASCII letters, digits and
    `keep` becomes '_', then `strip` is stripped from both ends; `empty` when nothing is left.

    The defaults name backups and reports; the nightly pages also strip dots (strip="._"),
    GX names keep no dots (keep="_-", empty="x"). Files are found again by these names:
    a variant's result for a given text must not change.
    """
    return re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "_", str(text)).strip(strip) or empty
