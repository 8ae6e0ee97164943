"""The code is clean under the ruff rules of pyproject.toml (pyflakes, bugbear, import order, pyupgrade)."""
import subprocess
import sys

from tests.conftest import CONF


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=CONF.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
