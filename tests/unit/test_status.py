"""polycoder/status is built without torch: what a client or a probe imports stays light."""

from __future__ import annotations

import subprocess
import sys


def test_the_status_module_imports_no_torch():
    check = "import sys, polycoder_ls.status; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
