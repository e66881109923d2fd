"""Off a terminal, a long demo stage is never minutes of silence: it prints a line while it runs."""

import time
from types import SimpleNamespace

from wdecomp import demo


def test_a_long_stage_prints_still_running_lines(monkeypatch, capsys):
    monkeypatch.setattr(demo, "HEARTBEAT_S", 0.05)
    report = SimpleNamespace(bar=None, stages="lines", timings={}, cpu_timings={}, started=time.perf_counter())
    assert demo._timed(report, "slow stage", lambda: time.sleep(0.3) or 7) == 7
    err = capsys.readouterr().err
    beats = [ln for ln in err.splitlines() if ln.startswith("wdecomp demo: slow stage: still running")]
    assert 2 <= len(beats) <= 7, err
    last = err.strip().splitlines()[-1]  # "wdecomp demo: slow stage: 0.3 s ..." (a loaded machine may oversleep)
    assert last.startswith("wdecomp demo: slow stage: ") and 0.3 <= float(last.split(": ")[2].split()[0]) < 5, err
    time.sleep(0.15)  # the heartbeat stopped with the stage
    assert capsys.readouterr().err == ""
