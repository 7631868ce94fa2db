"""The DAG steps' own safety: a pod that asked for GPUs and sees none, and a hung command past its timeout."""

import os
import sys
import time

import pytest

from vigos import steps
from vigos.errors import VigosError


def test_gpus_requested_but_none_visible_fails_naming_node_and_driver(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("NODE_NAME", "gpu-node-7")
    with pytest.raises(VigosError) as e:
        steps._processes(8)
    msg = str(e.value)
    assert "8 GPU(s) requested but none usable" in msg and "node gpu-node-7" in msg and "driver:" in msg
    assert steps._processes(0) == 1  # a CPU run asks for none


def test_fewer_gpus_than_requested_uses_what_is_there(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert steps._processes(8) == 2 and "8 GPUs requested but 2 visible" in capsys.readouterr().out


def test_a_command_past_its_timeout_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.time()
    with pytest.raises(VigosError, match="ran past its timeout"):
        steps._run([sys.executable, "-c", script], dict(os.environ), timeout_h=2 / 3600, what="training")
    assert time.time() - t0 < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild (a torchrun worker, say) went down with the group
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the child process outlived the timeout")


def test_a_failing_command_is_an_error():
    with pytest.raises(RuntimeError, match="exited with code 3"):
        steps._run([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), timeout_h=0, what="training")
