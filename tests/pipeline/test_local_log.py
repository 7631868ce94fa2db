"""What the demo's terminal shows of kfp.local's stream (`pipeline.local._StepLog`)."""

import io

from pipeline.local import _StepLog


def test_the_steps_own_lines_reach_the_terminal_and_everything_reaches_the_log(tmp_path):
    terminal = io.StringIO()
    log = _StepLog(terminal, tmp_path / "demo.log")
    lines = [
        "    [vigos] training with 1 process(es); checkpoints in /v/train",  # kfp.local indents task output
        "    train:  50%|#####     | 2/4\rtrain: 100%|##########| 4/4 [vigos] training done (4 steps)",
        "    [vigos] eval 1/10 mmmu: 10 generated, 0 resumed; elapsed 3s, about 27s left",
        "    INFO executor input: {...}",
    ]
    log.write("\n".join(lines) + "\n")
    log.close()
    shown = terminal.getvalue().splitlines()
    assert shown == ["      [vigos] training with 1 process(es); checkpoints in /v/train",
                     "      [vigos] training done (4 steps)",
                     "      train: 100%|##########| 4/4"]
    assert (tmp_path / "demo.log").read_bytes().decode() == "\n".join(lines) + "\n"
