"""Tests of the CUDA path: collected only where torch sees a CUDA device (bench/gpu_check.sh
runs them on a GPU machine; elsewhere there is nothing of theirs to run)."""

from __future__ import annotations

import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
