"""The study files that ship with synthdata, runnable by name from any directory: `synthdata run quickstart`.

They are package data (installed with `pip install .` or the wheel), so a user needs no
checkout of the repository; in a checkout, `studies/` at the top is a link to this folder.
"""
from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped studies' names (their file names without `.yaml`), sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def is_name(study: str) -> bool:
    """A bare name (no directory, no `.yaml`) that is no file here: it can only mean a shipped study."""
    path = Path(study)
    return not path.exists() and len(path.parts) == 1 and path.suffix not in (".yaml", ".yml")


def resolve(study: str) -> str:
    """A study argument as a path: a bare name as its shipped study's file, anything else as it is.

    A name that no shipped study has is returned unchanged (`load_spec` then says "study file not found").
    """
    shipped = SHIPPED_DIR / f"{study}.yaml"
    return str(shipped) if is_name(study) and shipped.is_file() else study
