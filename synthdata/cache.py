"""Where synthdata keeps what it computes once and reuses: reference statistics, an empty MLflow store."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """$SYNTHDATA_CACHE, else ~/.cache/synthdata; None when it is "off" or "" (nothing is kept)."""
    where = os.environ.get("SYNTHDATA_CACHE", str(Path.home() / ".cache" / "synthdata"))
    return None if where.strip() in ("", "off") else Path(where)
