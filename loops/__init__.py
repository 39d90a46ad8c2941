"""The runners Ray drives, one module per study kind; `loops.study` is the life cycle they share.

A new study kind is one spec section (`synthdata.spec.STUDY_KINDS`) and one runner module
here, registered in `RUNNERS`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

RUNNERS: dict[str, str] = {"loop": "loops.loop", "mix": "loops.mix", "detect": "loops.detect", "guide": "loops.guide"}


def runner_for(kind: str) -> ModuleType:
    """The runner module of a study kind (imported on demand: Ray and torch take seconds to import)."""
    return importlib.import_module(RUNNERS[kind])

