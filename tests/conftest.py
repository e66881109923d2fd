"""Test-session settings: one torch thread (tiny models run faster without thread contention on
2 cores), a non-interactive matplotlib backend, no progress bars, and a session-wide model cache
so models trained by one test are loaded by the next."""

import os
import sys
import tempfile

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WDECOMP_NO_PROGRESS", "1")
os.environ.setdefault("WDECOMP_CACHE", tempfile.mkdtemp(prefix="wdecomp-test-cache-"))
torch.set_num_threads(1)

# The test tree mirrors the package; the shared model cases (``_zoo``) live at its root.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
