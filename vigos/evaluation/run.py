"""`vigos eval run`: sample k responses per question of every benchmark and write them, resumably, as JSONL.

    counts = run_eval("out/merged", cfg, "out/eval")      # alone, or under `torchrun --nproc_per_node N`

For each benchmark of `cfg.eval.benchmarks` (registry: `vigos.evaluation.benchmarks`):

- **Prompt** (docs/evaluation.md): one user turn with every image in order (at most `eval.max_images`) then the student
  prompt; the assistant turn is prefilled with `<description>`; the stored response is `<description>` + completion.
- **Samples**: `eval.n_samples` per question (1 for ViLP), sample s with seed `eval.seed + s`, sampled by the
  engine's per-row seeded sampler (so a sample does not depend on its batch, its rank or the world size).
- **Batching**: the missing (question, sample) pairs are sorted longest prompt first (the static cache is sized by
  the first chunk and never has to grow) and cut into chunks of `eval.batch_size` sequences; each chunk is one
  `Engine.generate` call over many questions, then its rows are appended to the output (one write + fsync).
- **Data parallel**: under torchrun, rank r takes `shard_for_rank(all pairs, r, world)` minus the rows already
  written (so a rank's share does not depend on when it read the files), and appends to
  `responses/<benchmark>.jsonl.rank<r>-of-<world>.part`; after a barrier rank 0 merges the parts into
  `responses/<benchmark>.jsonl` and removes them. Alone, rows go straight to `responses/<benchmark>.jsonl`.
- **Resume**: existing rows (the final file and any part files, from any world size) are read first and only the
  missing (example_id, sample_index) pairs are generated. A truncated last line (a kill mid-write) is ignored and cut
  off before appending; an unreadable line elsewhere is ignored with a warning. When a benchmark is complete, its
  file is rewritten atomically (temp file + rename) with exactly the requested rows in item order, sample order.
- **Settings guard**: `responses/eval_run.json` records the sampling settings, seed, image budget, prefill, prompt
  text and each benchmark's source copy; resuming with different ones is an error (mixing them would make Pass@k
  meaningless); a different model path is only a warning (a re-mounted artifact). It also gets each benchmark's
  counts and skipped bad rows. Temp files of a killed rewrite are removed when a run starts.
- **Who generated** (`eval_run.json` "generations", not "settings"): each run that wrote rows appends its backend
  (`eval.backend`, the engine class, the model; `openai`: the server's URL, secrets masked, and model name; `vllm`:
  its version and arguments), when it started, and per benchmark the rows it wrote (a run killed mid-benchmark has
  its rows counted by the next run as resumed). The backend is not a setting: every backend renders the same prompt
  (a server's is checked token for token), samples with the same parameters and per-sample seeds, so their
  samples are interchangeable in distribution (not in bits). A run may therefore resume another backend's rows
  (a vLLM pod that died, finished by the engine), and the registry's like-for-like check (the "settings" as `eval.*`
  tags) does not set a vLLM-evaluated candidate apart from an engine-evaluated champion.

Row contract (docs/architecture.md): `benchmark`, `example_id`, `sample_index`, `prompt` (the problem text shown in the
student prompt, options included), `response`, `reference`, `answer_type`, `options`, `extracted` (null: scoring
fills it), `correct` (null), plus `meta`, `seed`, `finish_reason` ("stop" / "length") and `num_tokens`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vigos import volume
from vigos.config import EvalConfig, VigosConfig
from vigos.data.prompts import DESCRIPTION_PREFILL, STUDENT_PROMPTS, build_messages, build_prompt_text, with_prefill
from vigos.errors import VigosError, disk_writes
from vigos.evaluation.benchmarks import EvalItem, get_benchmark, load_benchmark, parse_sources
from vigos.generation import GenerationRequest, SamplingParams, dist_rank_world, shard_for_rank
from vigos.progress import duration
from vigos.redact import redact

log = logging.getLogger(__name__)

RESPONSES_DIR = "responses"
RUN_FILE = "eval_run.json"
PROGRESS_LINE_S = 60.0
"""Seconds between the plain progress lines of a long benchmark (for pod logs; the tqdm bar is for terminals)."""
ROW_FIELDS = (
    "benchmark", "example_id", "sample_index", "prompt", "response", "reference", "answer_type", "options",
    "extracted", "correct", "meta", "seed", "finish_reason", "num_tokens",
)
_PART = re.compile(r"\.jsonl\.rank\d+-of-\d+\.part$")

ChunkHook = Callable[[str, int, int], None]
"""`on_chunk(benchmark, rows_done_by_this_rank, rows_to_do_by_this_rank)`, called after each chunk is on disk."""


# --------------------------------------------------------------------------------------------------------------
# Files


def responses_path(output_dir: str | Path, benchmark: str) -> Path:
    return Path(output_dir) / RESPONSES_DIR / f"{benchmark}.jsonl"


def part_path(output_dir: str | Path, benchmark: str, rank: int, world_size: int) -> Path:
    return Path(output_dir) / RESPONSES_DIR / f"{benchmark}.jsonl.rank{rank}-of-{world_size}.part"


def _part_files(output_dir: str | Path, benchmark: str) -> list[Path]:
    folder = Path(output_dir) / RESPONSES_DIR
    if not folder.is_dir():
        return []
    prefix = f"{benchmark}.jsonl.rank"
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and _PART.search(p.name))


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(rows, unreadable lines) of a responses JSONL file; missing file: ([], 0). Tolerates a truncated last line."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    rows: list[dict[str, Any]] = []
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
                continue
            if not isinstance(row, dict) or "example_id" not in row or "sample_index" not in row:
                bad += 1
                continue
            rows.append(row)
    return rows, bad


def _key(row: dict[str, Any]) -> tuple[str, int]:
    return str(row["example_id"]), int(row["sample_index"])


def _existing_rows(output_dir: Path, benchmark: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows already written for `benchmark` (final file first, then part files); the first row of a key wins."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in [responses_path(output_dir, benchmark), *_part_files(output_dir, benchmark)]:
        rows, bad = read_rows(path)
        if bad:
            log.warning("%s: ignored %d unreadable line(s) (an interrupted write); they will be regenerated", path, bad)
        for row in rows:
            try:
                key = _key(row)
            except (TypeError, ValueError):
                continue
            if key not in found or (_failed(found[key]) and not _failed(row)):  # a retried error row is replaced
                found[key] = row
    return found


def _failed(row: dict[str, Any]) -> bool:
    """A row whose request failed for good (a server backend): it counts as missing when a run resumes."""
    return row.get("finish_reason") == "error"


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (a kill in the middle of a write) so that appended rows start on a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the last newline, reading backwards in blocks.
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                keep = pos + idx + 1
                break
        f.truncate(keep)


class _Appender:
    """Appends rows to a JSONL file, one write + flush + fsync per batch of rows."""

    def __init__(self, path: Path) -> None:
        with disk_writes(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            _repair_tail(path)
            self._f = open(path, "a", encoding="utf-8")
        self.path = path

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        # a partial line a full disk leaves is cut off by the next run's _repair_tail; the rows before stay
        with disk_writes(self.path.parent, needed=len(text.encode())):
            self._f.write(text)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _write_atomic(path: Path, text: str) -> None:
    with disk_writes(path.parent, needed=len(text.encode())):
        volume.write_atomic(path, text, fsync=True)


def _write_rows_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# --------------------------------------------------------------------------------------------------------------
# Settings guard


def _settings(cfg: VigosConfig, params: SamplingParams) -> dict[str, Any]:
    """What makes two runs' samples interchangeable (n_samples / max_examples / benchmarks only select rows).

    `sources`: each benchmark's copy (a resolved local path, or "hub"), compared benchmark by benchmark: rows of one
    copy's questions must never count as answers to another's. `student_prompt_sha256`: the text itself, which a
    new release of this code may change under the same name."""
    local = parse_sources(cfg.eval.sources)
    return {
        "sampling": params.to_dict(),
        "seed": cfg.eval.seed,
        "max_images": cfg.eval.max_images,
        "min_pixels": cfg.model.min_pixels,
        "max_pixels": cfg.model.max_pixels,
        "dtype": cfg.model.dtype,
        "prefill": DESCRIPTION_PREFILL,
        "student_prompt": cfg.prompt.student,
        "student_prompt_sha256": hashlib.sha256(STUDENT_PROMPTS[cfg.prompt.student].encode()).hexdigest(),
        "sources": {name: str(Path(local[name]).expanduser().resolve()) if name in local else "hub"
                    for name in cfg.eval.benchmarks},
    }


def _read_run_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as e:
        raise VigosError(f"{path} is unreadable ({e}); delete it to start the responses over") from e
    return data if isinstance(data, dict) else {}


def _changed_settings(previous: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Keys whose values differ. Only keys the earlier run recorded count (an older file lacks the newer ones), and
    sources only for benchmarks both runs name (a run may add or leave out benchmarks)."""
    diff = [k for k in previous if k != "sources" and previous[k] != settings.get(k)]
    before, now = previous.get("sources") or {}, settings["sources"]
    return sorted(diff + [f"sources.{b}" for b in before if b in now and before[b] != now[b]])


def _flat_get(settings: dict[str, Any], key: str) -> Any:
    head, _, tail = key.partition(".")
    return settings.get(head) if not tail else (settings.get(head) or {}).get(tail)


def _check_settings(run_file: Path, settings: dict[str, Any], model: str) -> dict[str, Any]:
    data = _read_run_file(run_file)
    previous = data.get("settings")
    diff = _changed_settings(previous, settings) if previous is not None else []
    if diff:
        raise VigosError(
            f"{run_file.parent} holds responses generated with other settings ({', '.join(diff)}: "
            f"{ {k: _flat_get(previous, k) for k in diff} } now { {k: _flat_get(settings, k) for k in diff} }); "
            "use a new --output folder, or delete that one to start over"
        )
    if previous is not None:  # keep the sources of benchmarks this run leaves out: their rows stay in the folder
        settings = {**settings, "sources": {**(previous.get("sources") or {}), **settings["sources"]}}
    if data.get("model") not in (None, model):
        log.warning("resuming responses of model %s with model %s (same settings)", data["model"], model)
    data.update({"settings": settings, "model": model})
    data.setdefault("benchmarks", {})
    return data


# --------------------------------------------------------------------------------------------------------------
# Distributed helpers (module-level so tests can stand in for a process group)


def _init_distributed(world_size: int) -> None:
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from vigos.training.distributed import init_distributed

        init_distributed()


def _barrier() -> None:
    from vigos.training.distributed import barrier

    barrier()


def _device(local_rank: int) -> str | None:
    import torch

    return f"cuda:{local_rank}" if torch.cuda.is_available() else None


# --------------------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class _Model:
    """The engine and processor, loaded on first use (a complete, resumed run never loads the model nor starts a
    server). `close()` stops a `vllm serve` this run started."""

    model_dir: str
    cfg: VigosConfig
    engine: Any = None
    processor: Any = None
    out: Path = Path(".")
    _stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        self._stack.close()

    def __post_init__(self) -> None:
        self.given = self.engine is not None
        self.server = not self.given and self.cfg.eval.backend != "engine"
        """Whether the engine is an OpenAI-compatible server (a given `engine` is used as it is)."""

    def generation_record(self) -> dict[str, Any]:
        """This run's entry of eval_run.json "generations" (see the module docstring), once its engine exists."""
        ev = self.cfg.eval
        record: dict[str, Any] = {"backend": "given" if self.given else ev.backend,
                                  # None: rank 0 wrote none of the rows (the other ranks did)
                                  "engine": None if self.engine is None else type(self.engine).__name__,
                                  "model": self.model_dir}
        if not self.given and ev.backend == "openai":
            record |= {"base_url": redact(ev.base_url), "server_model": ev.server_model or self.model_dir}
        elif not self.given and ev.backend == "vllm":
            from importlib.metadata import PackageNotFoundError, version

            try:
                record["vllm"] = version("vllm")
            except PackageNotFoundError:
                record["vllm"] = None
            record |= {"vllm_args": [redact(a) for a in ev.vllm_args],
                       "vllm_data_parallel_size": ev.vllm_data_parallel_size}
        return record

    def get_processor(self) -> Any:
        if self.processor is None:
            from vigos.modeling.load import load_processor

            self.processor = load_processor(self._model_cfg())
        return self.processor

    def get_engine(self) -> Any:
        if self.engine is None and self.cfg.eval.backend != "engine":
            self.engine = self._server_engine()
        if self.engine is None:
            from vigos.generation import HFEngine
            from vigos.modeling.load import load_model

            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            model = load_model(self._model_cfg(), _device(local_rank))
            self.engine = HFEngine(model, self.get_processor(), batch_size=self.cfg.eval.batch_size, progress=False,
                                   decode=self.cfg.model.decode_loop)
        return self.engine

    def _model_cfg(self):
        return dataclasses.replace(self.cfg.model, name_or_path=self.model_dir)

    def _server_engine(self) -> Any:
        from vigos.generation.openai import OpenAIEngine

        ev = self.cfg.eval
        concurrency = ev.concurrency
        if ev.backend == "vllm":
            from vigos.generation.vllm_server import SERVED_MODEL_NAME, visible_gpus, vllm_server
            from vigos.modeling.load import resolve_model_source

            replicas = ev.vllm_data_parallel_size or visible_gpus()  # 0 GPUs: vllm_server says so in one line
            concurrency *= max(1, replicas)  # per replica: keep each one fed
            base_url = self._stack.enter_context(vllm_server(
                str(resolve_model_source(self.model_dir)), data_parallel_size=replicas,
                log_path=self.out / "vllm.log", timeout_s=ev.vllm_start_timeout_s, extra_args=ev.vllm_args))
            model, key = SERVED_MODEL_NAME, None
        else:
            if not ev.base_url:
                raise VigosError("eval.backend=openai needs the server's API root: --base-url http://HOST:PORT/v1 "
                                 "(or --set eval.base_url=...)")
            base_url, model, key = ev.base_url, ev.server_model or self.model_dir, os.environ.get(ev.api_key_env)
        return OpenAIEngine(base_url, model, self.get_processor(), api_key=key, prefill=ev.prefill,
                            concurrency=concurrency, max_retries=ev.request_retries, timeout_s=ev.request_timeout_s)


def _prompt_cost(item: EvalItem, max_pixels: int) -> int:
    """A rough prompt length in tokens (text chars / 4 + image tokens at the pixel budget), for sorting."""
    image_tokens = sum(min(w * h, max_pixels) // (28 * 28) for w, h in item.image_sizes)
    return len(item.problem) // 4 + image_tokens


def _row(item: EvalItem, sample_index: int, result: Any) -> dict[str, Any]:
    failed = result.finish_reason == "error"  # no response at all: scored wrong, asked again by a resumed run
    return {
        "benchmark": item.benchmark,
        "example_id": item.example_id,
        "sample_index": sample_index,
        "prompt": item.problem,
        "response": None if failed else DESCRIPTION_PREFILL + result.text,
        "reference": item.reference,
        "answer_type": item.answer_type,
        "options": item.options,
        "extracted": None,
        "correct": None,
        "meta": item.meta,
        "seed": result.seed,
        "finish_reason": result.finish_reason,
        "num_tokens": result.num_tokens,
    }


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_eval(
    model_dir: str | Path,
    cfg: VigosConfig,
    output_dir: str | Path,
    progress: bool = True,
    *,
    engine: Any = None,
    processor: Any = None,
    cache_dir: str | None = None,
    on_chunk: ChunkHook | None = None,
) -> dict[str, dict[str, Any]]:
    """Generate the missing responses of every benchmark into `output_dir/responses/`; returns per-benchmark counts.

    `model_dir`: a merged model folder, or the base model's Hub id / path (loaded with `vigos.modeling.load`, the
    rest of `cfg.model` applies). `engine` / `processor`: use these instead of loading (any `Engine`, e.g. vLLM;
    the processor builds the chat-template text). `cache_dir`: where `datasets` converts local parquet copies.
    Counts per benchmark: `examples`, `samples` (k), `rows` (in the final file; rank 0), `generated` (by this rank),
    `resumed` (rows found from an earlier run), `skipped_rows` (bad source rows), `finish_length`, `complete`.
    """
    ev: EvalConfig = cfg.eval
    names = list(ev.benchmarks)
    specs = [get_benchmark(name) for name in names]  # unknown names fail before anything loads
    if ev.n_samples < 1:
        raise VigosError(f"eval.n_samples must be >= 1, got {ev.n_samples}")
    if ev.batch_size < 1:
        raise VigosError(f"eval.batch_size must be >= 1, got {ev.batch_size}")
    sources = parse_sources(ev.sources)
    params = SamplingParams.from_eval(ev)
    rank, world = dist_rank_world()
    _init_distributed(world)
    out = Path(output_dir)
    run_file = out / RESPONSES_DIR / RUN_FILE
    if rank == 0 and (out / RESPONSES_DIR).is_dir():
        # a killed rewrite's temp file would otherwise sit beside the responses and go up with them
        for path in volume.remove_temp_files(out / RESPONSES_DIR):
            log.info("removed %s, left by an interrupted write", path)
    model_name = str(model_dir)
    run_state = _check_settings(run_file, _settings(cfg, params), model_name)
    if rank == 0:
        _write_atomic(run_file, json.dumps(run_state, indent=2, ensure_ascii=False) + "\n")
    holder = _Model(model_name, cfg, engine=engine, processor=processor, out=out)
    try:
        counts = _run_benchmarks(specs, holder, cfg, params, out, sources, run_state, run_file, rank, world,
                                 progress, cache_dir, on_chunk)
    finally:
        holder.close()  # a vllm serve started for this run stops here, whatever happened
    errors = {name: c["errors"] for name, c in counts.items() if c.get("errors")}
    if errors:
        raise VigosError(
            f"{sum(errors.values())} request(s) failed after eval.request_retries retries ({errors}); their rows "
            f"are in {out / RESPONSES_DIR} with finish_reason \"error\" and no response (scored as wrong): run the "
            "same command again to ask for those alone")
    return counts


def _run_benchmarks(
    specs: list[Any], holder: _Model, cfg: VigosConfig, params: SamplingParams, out: Path,
    sources: dict[str, str], run_state: dict[str, Any], run_file: Path, rank: int, world: int, progress: bool,
    cache_dir: str | None, on_chunk: ChunkHook | None,
) -> dict[str, dict[str, Any]]:
    ev = cfg.eval
    counts: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    generation: dict[str, Any] | None = None  # this run's "generations" entry, from its first written row
    for index, spec in enumerate(specs):
        name = spec.name
        loaded = load_benchmark(name, source=sources.get(name), max_examples=ev.max_examples,
                                max_images=ev.max_images, cache_dir=cache_dir)
        items = loaded.items
        k = spec.n_samples(ev.n_samples)
        existing = {key for key, row in _existing_rows(out, name).items() if not _failed(row)}
        wanted = [(item, s) for item in items for s in range(k)]
        resumed = sum((item.example_id, s) in existing for item, s in wanted)
        # Longest prompts first (stable: the samples of a question stay together), dealt round-robin over ranks.
        # ALL pairs are dealt, then each rank drops the ones already written: a rank's share never depends on
        # when it read the files (another rank may already be appending to its part).
        ordered = sorted(wanted, key=lambda pair: -_prompt_cost(pair[0], cfg.model.max_pixels))
        mine = [(item, s) for item, s in shard_for_rank(ordered, rank, world) if (item.example_id, s) not in existing]
        generated = _generate(name, mine, holder, params, ev, cfg.prompt.student, out, rank, world, progress,
                                  on_chunk)

        if world > 1:
            _barrier()  # every rank's part file is complete before rank 0 merges
        record: dict[str, Any] = {
            "examples": len(items), "samples": k, "generated": generated, "resumed": resumed,
            "skipped_rows": len(loaded.skipped),
        }
        if rank == 0:
            final = _merge(out, name, wanted)
            errors = sum(map(_failed, final))
            record.update(rows=len(final), finish_length=sum(r.get("finish_reason") == "length" for r in final),
                          errors=errors, complete=len(final) == len(wanted) and not errors)
            run_state["benchmarks"][name] = {**record, "sources": loaded.sources, "skipped": loaded.skipped}
            written = len(final) - resumed  # this run's rows, all ranks, failed requests included
            if written:
                if generation is None:
                    generation = {**holder.generation_record(), "started": started_at, "rows": {}}
                    run_state.setdefault("generations", []).append(generation)
                generation["rows"][name] = written
            _write_atomic(run_file, json.dumps(run_state, indent=2, ensure_ascii=False) + "\n")
        counts[name] = record
        if rank == 0:  # a plain line per benchmark: pod logs get no tqdm bar worth reading
            elapsed = time.monotonic() - started
            left = elapsed / (index + 1) * (len(specs) - index - 1)
            print(f"[vigos] eval {index + 1}/{len(specs)} {name}: {generated} generated, {resumed} resumed; "
                  f"elapsed {duration(elapsed)}, about {duration(left)} left", flush=True)
    if world > 1:
        _barrier()
    return counts


def _generate(
    name: str,
    pairs: list[tuple[EvalItem, int]],
    holder: _Model,
    params: SamplingParams,
    ev: EvalConfig,
    student_prompt: str,
    out: Path,
    rank: int,
    world: int,
    progress: bool,
    on_chunk: ChunkHook | None,
) -> int:
    """Generate this rank's pairs chunk by chunk, appending each chunk's rows; returns the rows written."""
    if not pairs:
        return 0
    from tqdm.auto import tqdm

    path = responses_path(out, name) if world == 1 else part_path(out, name, rank, world)
    engine = holder.get_engine()
    processor = holder.get_processor()
    prompts: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    writer = _Appender(path)
    bar = tqdm(total=len(pairs), desc=name, unit="sample", disable=not progress or rank != 0)
    done = 0
    started = last_line = time.monotonic()
    try:
        # a server backend keeps `concurrency` requests in flight: a chunk (one append) holds a few rounds of them
        for chunk in _chunks(pairs, 4 * ev.concurrency if holder.server else ev.batch_size):
            images: dict[str, list[Any]] = {}
            requests = []
            for item, s in chunk:
                if item.example_id not in images:
                    images[item.example_id] = item.images
                if item.example_id not in prompts:
                    messages = build_messages(item.problem, images[item.example_id], prompt=student_prompt)
                    prompts[item.example_id] = (build_prompt_text(processor, messages), with_prefill(messages))
                text, messages = prompts[item.example_id]
                requests.append(GenerationRequest(text, images[item.example_id], ev.seed + s, messages=messages))
            results = engine.generate(requests, params)
            if len(results) != len(requests):
                raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
            writer.write([_row(item, s, res) for (item, s), res in zip(chunk, results, strict=True)])
            done += len(chunk)
            bar.update(len(chunk))
            now = time.monotonic()
            if rank == 0 and now - last_line >= PROGRESS_LINE_S and done < len(pairs):
                # a plain periodic line as well: tqdm redraws with \r, which a pod log or a non-terminal mangles
                rate = done / (now - started)
                print(f"[vigos] eval {name}: {done}/{len(pairs)} samples ({done / len(pairs):.0%}), {rate:.2f}/s, "
                      f"about {duration((len(pairs) - done) / rate)} left", flush=True)
                last_line = now
            if on_chunk is not None:
                on_chunk(name, done, len(pairs))
    finally:
        bar.close()
        writer.close()
    return done


def _merge(out: Path, name: str, wanted: list[tuple[EvalItem, int]]) -> list[dict[str, Any]]:
    """Rewrite `responses/<name>.jsonl` atomically with the requested rows in item/sample order; drop the parts.

    Rows of examples or samples no longer requested (a smaller max_examples or n_samples) are left out, so the file
    always holds the same k samples for every question it lists.
    """
    existing = _existing_rows(out, name)
    final = [existing[(item.example_id, s)] for item, s in wanted if (item.example_id, s) in existing]
    extra = len(existing) - len(final)
    if extra:
        log.info("%s: %d row(s) of examples/samples not requested by this run left out of the final file", name, extra)
    _write_rows_atomic(responses_path(out, name), final)
    for part in _part_files(out, name):
        part.unlink()
    return final


def summary_lines(counts: dict[str, dict[str, Any]]) -> list[str]:
    """One line per benchmark for the CLI."""
    lines = []
    for name, c in counts.items():
        line = (f"{name}: {c['examples']} examples x {c['samples']} samples, {c['generated']} generated, "
                f"{c['resumed']} resumed")
        if "rows" in c:
            line += f", {c['rows']} rows ({c['finish_length']} hit max_new_tokens)"
        if c.get("skipped_rows"):
            line += f", {c['skipped_rows']} bad source rows skipped"
        lines.append(line)
    return lines
