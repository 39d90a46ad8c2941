"""Where a study run came from: the code's version, the study file, the user.

Written as MLflow's own system tags (`mlflow.source.name`, `mlflow.source.git.commit`,
`mlflow.user`, ...), so the UI shows them where it shows any run's source, plus
`synthdata.version`; the validated study file itself goes on the study run as
`study.yaml`, runnable again as it is.
"""
from __future__ import annotations

import getpass
import subprocess
from functools import cache
from pathlib import Path

from synthdata.version import __version__


@cache
def _git(*args: str) -> str | None:
    """`git <args>` in the checkout synthdata is imported from; None when it is not one (an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, str]:
    """The package version, and the git commit (with `-dirty` when the checkout has uncommitted changes) if there is one."""
    out = {"synthdata.version": __version__}
    commit = _git("rev-parse", "HEAD")
    if commit:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        out["mlflow.source.git.commit"] = commit
        out["synthdata.git_commit"] = commit + ("-dirty" if dirty else "")
    return out


def provenance_tags(source: str) -> dict[str, str]:
    """MLflow tags for every run of a study: its source (the study file or the command), the user, the code version."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = "unknown"
    return {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", "mlflow.user": user, **code_version()}
