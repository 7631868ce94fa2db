"""Hostile inputs to data prep, full and read-only disks, and killed writes in eval resume (issue 14).

The fault builders here are shared with tests/faults/test_inputs_and_disks.py: each fault is a file written the
way the field meets it (a Latin-1 byte in JSONL, a binary or int column, a truncated parquet shard, a 20 KB PNG
that decodes to 169 M pixels) or a failure injected at a named point (SIGTERM / SIGKILL in the middle of data prep,
OSError(ENOSPC) at a write). `run` repeats each and checks what the user gets: one line naming the file, the
column or the folder, and nothing already complete damaged or left behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from PIL import Image

try:
    from fault_cases import Outcome
except ImportError:  # imported by the tests, where benchmarks/ is not on the path as a package root
    Outcome = None  # type: ignore[assignment,misc]

REPO = Path(__file__).resolve().parents[2]


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side pixels, all zero: a few KB that decode to side^2 bytes (13000: 169 MB).
    Built with zlib directly: drawing it with PIL would cost the memory the test is about."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _parquet(path: Path, columns: dict[str, Any]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _images(n: int) -> list[list[dict[str, Any]]]:
    return [[{"bytes": png(40 + i, 40), "path": None}] for i in range(n)]


def hostile_sources(root: Path) -> dict[str, Path]:
    """One source per hostile input, by name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.png").write_bytes(png(40, 40))
    jsonl = root / "latin1.jsonl"
    good = json.dumps({"problem": "What colour?", "images": ["a.png"], "answer": "red"}).encode()
    jsonl.write_bytes(good + b"\n" + good + b"\n" + b'{"problem": "caf\xe9?", "images": ["a.png"], "answer": "B"}\n')
    n = 3
    shards = root / "shards" / "data"
    _parquet(shards / "train-00000-of-00002.parquet",
             {"problem": ["What colour?"] * n, "images": _images(n), "answer": ["red"] * n})
    whole = _parquet(root / "whole.parquet", {"problem": ["x"] * n, "images": _images(n), "answer": ["y"] * n})
    (shards / "train-00001-of-00002.parquet").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return {
        "latin1_jsonl": jsonl,
        "binary_problem": _parquet(root / "binary.parquet", {"problem": [b"What colour?"] * n, "images": _images(n),
                                                            "answer": ["red"] * n}),
        "int_answer": _parquet(root / "int.parquet", {"problem": ["How many?"] * n, "images": _images(n),
                                                     "answer": [0, 1, 2]}),
        "truncated_shard": root / "shards",
        "pixel_bombs": _parquet(root / "bombs.parquet", {
            "problem": ["a", "b", "c", "d"],
            # 13000^2 = 169 M (PIL only warns), 14000^2 = 196 M (PIL raises), two ordinary images
            "images": [[{"bytes": bomb_png(13000), "path": None}], [{"bytes": bomb_png(14000), "path": None}],
                       *_images(2)],
            "answer": ["A", "B", "C", "D"],
        }),
    }


def good_source(root: Path, n: int = 12) -> Path:
    from vigos.data.synthetic import write_synthetic

    return write_synthetic(root, n, seed=3, fmt="parquet")


_KILL_SCRIPT = """
import os, signal, sys
from vigos.config import DataConfig
from vigos.data import prepare as p
real = p._filter
def killed(work):  # the named point: rows checked, nothing written yet
    os.kill(os.getpid(), int(sys.argv[3]))
    return real(work)
p._filter = killed
p.prepare(DataConfig(source=sys.argv[1]), sys.argv[2], progress=False)
"""


def prep_killed(source: Path, out: Path, sig: int) -> int:
    """Run data prep in a child process that sends itself `sig` after checking the rows; its exit status."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(source), str(out), str(int(sig))], env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode


def scratch_folders(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.prep-*"))


@contextlib.contextmanager
def failing(target: Any, attribute: str, code: int = errno.ENOSPC,
            when: Callable[..., bool] = lambda *a, **k: True) -> Iterator[list[int]]:
    """Make `target.attribute` raise OSError(code) when `when(*args)` holds (what the OS raises at a write on a
    full or read-only disk); yields a list that counts the injected failures."""
    real = getattr(target, attribute)
    hits: list[int] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            hits.append(1)
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    with mock.patch.object(target, attribute, fake):
        yield hits


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to show nothing complete changed)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------------------
# The benchmark table


def _one_line_error(fn: Callable[[], Any], *needles: str) -> bool:
    from vigos.errors import VigosError

    try:
        fn()
    except VigosError as e:
        text = str(e)
        return "\n" not in text and all(n in text for n in needles)
    return False


def run(workdir: Path, runs: int) -> list[Any]:
    import datasets

    from vigos.config import DataConfig
    from vigos.data.prepare import prepare

    datasets.disable_progress_bars()
    sources = hostile_sources(workdir / "hostile")
    good = good_source(workdir / "good")
    rows: list[Any] = []

    def prep(source: Path, out: Path, **kw: Any) -> dict[str, Any]:
        return prepare(DataConfig(source=str(source), **kw), out, progress=False)

    expect = {
        "latin1_jsonl": (f"{sources['latin1_jsonl']}:3", "UTF-8"),
        "binary_problem": ("'problem'", "binary"),
        "int_answer": ("'answer'", "int64"),
        "truncated_shard": ("train-00001-of-00002.parquet",),
    }
    for name, needles in expect.items():
        ok, spent = 0, 0.0
        for i in range(runs):
            t = time.perf_counter()
            ok += _one_line_error(lambda name=name, i=i: prep(sources[name], workdir / f"o-{name}-{i}"), *needles)
            spent += time.perf_counter() - t
        rows.append(Outcome(f"input: {name.replace('_', ' ')} -> one line naming it", runs, ok, 0, "rows",
                            spent / runs))

    ok, spent = 0, 0.0
    for i in range(runs):
        t = time.perf_counter()
        stats = prep(sources["pixel_bombs"], workdir / f"o-bombs-{i}")
        spent += time.perf_counter() - t
        ok += stats["dropped"]["huge_image"] == 2 and stats["rows_out"] == 2
    rows.append(Outcome("input: 169 M / 196 M pixel PNGs -> dropped as huge_image", runs, ok, 0, "rows",
                        spent / runs))

    for sig in (signal.SIGTERM, signal.SIGKILL):
        ok, lost, spent = 0, 0, 0.0
        for i in range(runs):
            out = workdir / f"prep-{sig.name}-{i}"
            before = prep(good, out)["rows_out"]
            code = prep_killed(good, out, sig)
            t = time.perf_counter()
            after = prep(good, out)["rows_out"]  # the user's recovery: run it again
            spent += time.perf_counter() - t
            lost += before - after
            ok += code in (128 + sig, -sig) and not scratch_folders(out) and after == before
        rows.append(Outcome(f"{sig.name} mid data prep: scratch removed, output kept", runs, ok, lost, "rows",
                            spent / runs))

    import datasets as ds_lib

    ok, lost, spent = 0, 0, 0.0
    for i in range(runs):
        out = workdir / f"prep-full-{i}"
        before = prep(good, out)
        snapshot = tree(out)
        t = time.perf_counter()
        with failing(ds_lib.Dataset, "save_to_disk"):
            ok_line = _one_line_error(lambda out=out: prep(good, out), f"cannot write {out.parent}", "free")
        spent += time.perf_counter() - t
        intact = tree(out) == snapshot
        lost += 0 if intact else before["rows_out"]
        ok += ok_line and intact and not scratch_folders(out)
    rows.append(Outcome("ENOSPC saving data prep: one line, old output intact", runs, ok, lost, "rows",
                        spent / runs))
    rows.extend(_eval_rewrite(workdir, runs))
    return rows


def _eval_rewrite(workdir: Path, runs: int) -> list[Any]:
    """ENOSPC in eval's final rewrite, then a kill leaving its temp file: rows intact, temp file gone on rerun."""
    from vigos.evaluation import run as run_mod

    ok_full, ok_tmp, lost, spent = 0, 0, 0, 0.0
    for i in range(runs):
        out = workdir / f"eval-{i}" / "responses"
        out.mkdir(parents=True)
        rows = [{"example_id": str(k), "sample_index": 0, "response": "x"} for k in range(5)]
        path = out / "mmmu.jsonl"
        run_mod._write_rows_atomic(path, rows)
        before = path.read_bytes()
        t = time.perf_counter()
        with failing(run_mod.os, "replace"):
            ok_line = _one_line_error(lambda path=path, rows=rows: run_mod._write_rows_atomic(path, rows[:3]),
                                      f"cannot write {out}")
        spent += time.perf_counter() - t
        ok_full += ok_line and path.read_bytes() == before and not list(out.glob(".*.tmp"))
        lost += 0 if path.read_bytes() == before else len(rows)
        (out / ".mmmu.jsonl.k1ll3d.tmp").write_text('{"example_id": "0"}\n')  # what a SIGKILL there leaves
        from vigos import volume

        volume.remove_temp_files(out.parent)
        ok_tmp += not list(out.glob(".*.tmp")) and path.read_bytes() == before
    return [
        Outcome("ENOSPC in eval's final rewrite: one line, rows intact", runs, ok_full, lost, "rows", spent / runs),
        Outcome("temp file of a killed eval rewrite: removed before upload", runs, ok_tmp, 0, "files", 0.0),
    ]
