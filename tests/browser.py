"""Open a page in headless Chromium (Debian's `chromium`) and read back what it rendered."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# No GPU, no sandbox (root in CI), and nothing that reaches for Google's hosts on a closed network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium() -> str:
    """Chromium's path; skips the test where it is not installed, unless CI requires it (SYNTHDATA_REQUIRE_BROWSER=1)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("SYNTHDATA_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium); CI requires the browser test")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def rendered_images(page: Path, tmp: Path) -> tuple[int, int, Path]:
    """(images on the page, images decoded with a size), after load, and a screenshot of the page."""
    exe = chromium()
    base = [exe, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    match = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-rendered="(\d+)"', dom)
    assert match, "the page's load handler never ran (no data-images on <body>)"
    shot = tmp / "page.png"
    subprocess.run([*base, "--window-size=1200,2400", f"--screenshot={shot}", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    return int(match.group(1)), int(match.group(2)), shot
