"""The `synthdata` command as a user runs it: exit codes, one-line errors, no tracebacks."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, tiny_study, write_png

SYNTHDATA = str(Path(sys.executable).parent / "synthdata")


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SYNTHDATA, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_study(tmp_path: Path, study) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study) if isinstance(study, dict) else study)
    return path


def test_validate_prints_the_resolved_spec():
    r = run_cli("validate", "studies/quickstart.yaml", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "valid loop study 'quickstart'" in r.stdout and "train_steps: 450" in r.stdout


# The installed command's exit code and stderr, for one spec error and one data error; the
# forty cases of tests/test_bad_input.py call the same `main` in-process.
@pytest.mark.parametrize(
    "study, needle, command",
    [
        ({"name": "s", "loop": {"generatons": 3}}, "loop.generatons: unknown key", "validate"),
        ({"name": "s", "data": {"source": "folder", "root": "no/such/folder"}}, "data.root: directory does not exist", "run"),
    ],
)
def test_bad_study_exits_2_with_one_line(tmp_path, study, needle, command):
    path = write_study(tmp_path, study)
    r = run_cli(command, str(path), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked, so nothing is half-written


def test_corrupt_image_exits_2_before_any_run_is_opened(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(10):
            write_png(data / f"c{c}" / f"{i}.png", rng.integers(0, 256, (8, 8)))
    (data / "c1" / "3.png").write_bytes(b"garbage")
    path = write_study(tmp_path, tiny_study(data={"source": "folder", "root": str(data)}))
    r = run_cli("run", str(path), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {data / 'c1' / '3.png'} (image 13): cannot read image (UnidentifiedImageError)"
    assert not (tmp_path / "mlflow.db").exists()

# Refusals of --resume (no earlier run, a changed study) are in test_bad_input.py; a full CLI run and
# resume is in test_study_e2e.py.
