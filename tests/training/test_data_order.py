"""The trainer's step -> rows mapping (pure functions, no model): one epoch sees every row exactly once, and the
split over ranks and micro-steps does not change which rows a step sees."""

from __future__ import annotations

from collections import Counter
from itertools import chain

import datasets
import pytest

from vigos.config import TrainConfig
from vigos.training.trainer import TrainData, micro_batch_positions, step_positions, steps_per_epoch, total_steps


def _rows(data: TrainData, positions) -> list[int]:
    return [data.row_at(p) for p in positions]


@pytest.fixture()
def data(tmp_path) -> TrainData:
    n = 13  # not a multiple of any global batch below
    ds = datasets.Dataset.from_dict({"problem": ["q"] * n, "images": [[]] * n, "answer": [str(i) for i in range(n)]})
    ds.save_to_disk(str(tmp_path / "ds"))
    return TrainData(tmp_path / "ds", seed=42)


@pytest.mark.parametrize(("micro", "accumulation", "world"), [(1, 4, 1), (2, 2, 1), (1, 2, 2), (1, 1, 4), (2, 1, 3)])
def test_each_epoch_sees_every_row_once(data, micro, accumulation, world):
    n, g = len(data), micro * accumulation * world
    per_epoch = steps_per_epoch(n, g)
    assert per_epoch == -(-n // g)
    for epoch in range(3):
        seen: list[int] = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            for rank in range(world):
                mbs = micro_batch_positions(step, n, micro=micro, accumulation=accumulation, rank=rank, world=world)
                assert len(mbs) == accumulation and all(len(mb) <= micro for mb in mbs)
                seen += _rows(data, chain.from_iterable(mbs))
        assert Counter(seen) == Counter(range(n)), f"epoch {epoch}"
    # the last step of an epoch is the short one (13 rows, G rows a step)
    assert len(step_positions(per_epoch - 1, n, g)) == n - (per_epoch - 1) * g
    assert len(step_positions(per_epoch, n, g)) == min(g, n)  # the next epoch starts with a full step


def test_epochs_are_different_permutations(data):
    n = len(data)
    first = _rows(data, step_positions(0, n, n))
    second = _rows(data, step_positions(1, n, n))
    assert sorted(first) == sorted(second) == list(range(n)) and first != second


def test_layout_does_not_change_the_rows_of_a_step():
    """1 process with micro-batch 2 and 2 processes with micro-batch 1 see the same rows in each micro-step, also on
    the short last step (where trailing micro-batches, or a whole rank, get none)."""
    n = 7  # G = 4: steps of 4 and 3 rows
    for step in range(4):
        one = micro_batch_positions(step, n, micro=2, accumulation=2, rank=0, world=1)
        two = [micro_batch_positions(step, n, micro=1, accumulation=2, rank=r, world=2) for r in range(2)]
        for m in range(2):
            assert one[m] == two[0][m] + two[1][m]
    # the short last step of an epoch: 7 rows with G = 4 leave 3; with micro 2, accumulation 2, world 1 the second
    # micro-batch holds one row; with 10 rows and G = 8 (micro 1, accumulation 2, world 4) the last step has 2 rows,
    # so micro-step 1 and ranks 2-3 get none
    assert micro_batch_positions(1, 7, micro=2, accumulation=2, rank=0, world=1) == [[4, 5], [6]]
    short = [micro_batch_positions(1, 10, micro=1, accumulation=2, rank=r, world=4) for r in range(4)]
    assert short == [[[8], []], [[9], []], [[], []], [[], []]]


def test_total_steps():
    # 47,600 rows at 32 a step: 1,488 steps an epoch, the last one with 16 rows
    t = TrainConfig()
    assert (t.global_batch_size, t.num_train_epochs, t.max_steps) == (32, 1.0, -1)
    assert steps_per_epoch(47_600, 32) == total_steps(t, 47_600) == 1488
    assert len(step_positions(1487, 47_600, 32)) == 16
    assert total_steps(t, 5) == 1  # a tiny dataset still makes one (short) step
    assert total_steps(TrainConfig(global_batch_size=4, num_train_epochs=2.0), 13) == 8  # 4 steps an epoch, x2
    assert total_steps(TrainConfig(global_batch_size=10, num_train_epochs=0.1), 300) == 3  # not 4 (float noise)
    assert total_steps(TrainConfig(global_batch_size=10, num_train_epochs=0.5), 31) == 2  # ceil(0.5 x 4)
    assert total_steps(TrainConfig(global_batch_size=4, max_steps=7), 13) == 7  # max_steps wins
