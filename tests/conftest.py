"""Test-session settings: one torch thread (tiny models run faster without thread contention on
2 cores), a non-interactive matplotlib backend, no progress bars, and a session-wide model cache
so models trained by one test are loaded by the next."""

import os
import tempfile

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WDECOMP_NO_PROGRESS", "1")
os.environ.setdefault("WDECOMP_CACHE", tempfile.mkdtemp(prefix="wdecomp-test-cache-"))
torch.set_num_threads(1)
