"""The demo's warm-up: a short supervised pass that teaches the tiny random model the ViGOS answer format, cached
by fingerprint, written atomically, deterministic, and tuned so that some rollouts are well formed and some not."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from vigos.data.synthetic import SCENE_DESCRIPTIONS, synthetic_rows
from vigos.errors import VigosError
from vigos.modeling import warmup
from vigos.modeling.warmup import (
    MARKER_FILE,
    WarmupSettings,
    completion_text,
    read_warmup_info,
    valid_share,
    warm_up_model,
)
from vigos.training.segments import parse_completion, parse_segments
from vigos.training.teachers import ROLES, context_text, segment_tail

# A few steps only: enough to check plumbing, caching and determinism (the default settings are for the demo).
QUICK = WarmupSettings(steps=3, rows=8, batch_size=4)


@pytest.fixture(scope="module")
def warmed(tiny_model_dir, tmp_path_factory):
    """The demo's warm-up (default settings) of the session's tiny build: about 12 s on 2 cores."""
    return warm_up_model(tiny_model_dir, tmp_path_factory.mktemp("warm") / "model", progress=False)


def test_completions_are_well_formed_and_short(tiny_processor):
    rows = synthetic_rows(40, seed=5)
    assert {r["data_source"].split("/")[1] for r in rows} == set(SCENE_DESCRIPTIONS)  # every kind is covered
    for row in rows:
        text = completion_text(row)
        seg = parse_segments(text)
        assert seg.valid, (text, seg.reason)
        assert text.startswith(SCENE_DESCRIPTIONS[row["data_source"].split("/")[1]])
        assert 20 <= len(tiny_processor.tokenizer(text)["input_ids"]) + 1 <= 40  # + EOS: fits the tiny budget


def test_output_loads_like_the_tiny_build(warmed, tiny_model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    info = read_warmup_info(warmed)
    assert info["settings"] == dataclasses.asdict(WarmupSettings()) and info["version"] == warmup.WARMUP_VERSION
    assert info["examples"] == len(ROLES) * WarmupSettings().rows  # each row in the student's and teachers' contexts
    assert info["final_loss"] < info["first_loss"] / 4
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (warmed / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name  # the base's, as is
    assert not (warmed / "vigos_tiny_build.json").exists()  # not a tiny build: `vigos model tiny` must not reuse it
    processor = AutoProcessor.from_pretrained(warmed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(warmed)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert "lm_head.weight" in changed and any(".layers." in k for k in changed)
    assert len(processor.tokenizer) == 151665


def test_some_rollouts_are_well_formed_and_some_not(warmed):
    # sampled as training samples rollouts (T 1.1, top-p 0.95, top-k 20, the tiny preset's completion budget),
    # on the demo's training rows; measured 59% of 32 on the machine the settings were tuned on (other seeds of
    # the warm-up: 55%, 41% of 64), so the bounds leave room for float differences between CPUs
    share = valid_share(warmed, rows=32)
    assert 0.2 <= share <= 0.9, share


def test_teacher_examples_read_as_the_trainer_feeds_them(tiny_processor):
    # Each teacher example is, token for token, what the trainer feeds that teacher for a well-formed rollout of
    # the row (its context with `segment_tail`'s prefill, then the student's tokens), then what follows
    import io

    from PIL import Image

    tok = tiny_processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    examples = warmup._examples(tiny_processor, QUICK)
    rows = synthetic_rows(QUICK.rows, warmup.DATA_SEED_OFFSET + QUICK.seed)
    assert [ex["role"] for ex in examples] == list(ROLES) * len(rows)
    for i, row in enumerate(rows):
        by_role = {ex["role"]: ex for ex in examples[i * len(ROLES): (i + 1) * len(ROLES)]}
        rollout = by_role["student"]["completion_ids"]
        assert rollout == tok(completion_text(row), add_special_tokens=False)["input_ids"] + [eos]
        parsed = parse_completion(tok, rollout, eos_token_ids=eos)
        assert parsed.valid
        image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
        for role in ("perception", "reasoning", "reference"):
            prefill, first, end = segment_tail(role, parsed)
            context = context_text(tiny_processor, role, row["problem"], row["answer"], prefill=prefill)
            fed = tiny_processor(text=[context], images=[image])["input_ids"][0] + rollout[first:end]
            ours = by_role[role]["context_ids"] + by_role[role]["completion_ids"]
            assert ours[: len(fed)] == fed, role
            if role == "reasoning":  # the trainer's context ends in `<think`, the student's `>\n` comes next
                assert prefill == "<think" and tok.decode(rollout[first]) == ">\n"
        assert tok.decode(by_role["perception"]["completion_ids"]).endswith("</description><|im_end|>")


def _teacher_log_likelihoods(model_dir, rows) -> dict[str, float]:
    """Mean log-probability per scored token, over the full vocabulary, that each teacher played by `model_dir` gives
    a well-formed rollout of each row: the trainer's own contexts, prefills and token alignment
    (`objective.teacher_batches`); the reference teacher through OPSD's routing, which sends it every token."""
    import io
    from types import SimpleNamespace

    from PIL import Image

    from vigos.config import load_config
    from vigos.data.answers import normalize_answer
    from vigos.modeling.load import load_model, load_processor
    from vigos.training import teachers as T
    from vigos.training.objective import teacher_batches
    from vigos.training.segments import build_segment_masks

    cfg = load_config("tiny", values={"model.name_or_path": str(model_dir)})
    processor = load_processor(cfg.model, padding_side="right")
    model = load_model(cfg.model).eval()
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    examples = [SimpleNamespace(problem=r["problem"], answer=normalize_answer(r["answer"]),
                                image=Image.open(io.BytesIO(r["images"][0]["bytes"])).convert("RGB")) for r in rows]
    parsed = [parse_completion(tok, tok(completion_text(r), add_special_tokens=False)["input_ids"] + [eos],
                               eos_token_ids=eos) for r in rows]
    masks = build_segment_masks(parsed)
    ids = torch.zeros(masks.completion.shape, dtype=torch.long)
    for i, p in enumerate(parsed):
        ids[i, : p.num_tokens] = torch.tensor(p.token_ids)
    batches = teacher_batches(processor, cfg.train, examples, parsed, masks)  # all valid: perception, reasoning
    batches |= teacher_batches(processor, dataclasses.replace(cfg.train, method="opsd"), examples, parsed, masks)
    out = {}
    with torch.no_grad():
        for role, (batch, mask, batch_rows) in batches.items():
            hidden = T.hidden_states(model, batch)
            logits = hidden[batch.positions(mask)] @ model.lm_head.weight.T
            labels = ids[batch_rows][mask]  # both in row-major order of the mask
            out[role] = torch.log_softmax(logits.float(), -1).gather(1, labels[:, None]).mean().item()
    return out


def test_teachers_follow_their_contexts(warmed, tiny_model_dir):
    # The warmed model, in each teacher's context as the trainer builds it, predicts a well-formed rollout of the
    # demo's rows (never seen by the warm-up) about as well as the student does: measured -0.49 (perception),
    # -0.61 (reasoning), -0.48 (reference) nats per token; the random base: -12 (1 / 152,064); the student-only
    # warm-up of version 1: -8.3, -4.8, -2.4. A teacher that finds the rollout that unlikely clips nearly every
    # token's KL, and a clipped token gives no gradient.
    rows = synthetic_rows(8, seed=0)
    base, warm = _teacher_log_likelihoods(tiny_model_dir, rows), _teacher_log_likelihoods(warmed, rows)
    assert set(warm) == {"perception", "reasoning", "reference"}
    for role in warm:
        assert base[role] < -10 and warm[role] > -1.5, (role, base[role], warm[role])


def test_second_call_is_a_cache_hit(warmed, tiny_model_dir, monkeypatch):
    stamp = (warmed / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(warmup, "_train", lambda *a, **k: pytest.fail("the warm-up ran again"))
    started = time.perf_counter()
    assert warm_up_model(tiny_model_dir, warmed) == warmed
    assert time.perf_counter() - started < 0.5
    assert (warmed / "model.safetensors").stat().st_mtime_ns == stamp
    # other settings are another warm-up: not a hit
    with pytest.raises(pytest.fail.Exception, match="ran again"):
        warm_up_model(tiny_model_dir, warmed, dataclasses.replace(WarmupSettings(), steps=81))


def test_deterministic_in_the_seed(tiny_model_dir, tmp_path):
    a = warm_up_model(tiny_model_dir, tmp_path / "a", QUICK, progress=False)
    b = warm_up_model(tiny_model_dir, tmp_path / "b", QUICK, progress=False)
    c = warm_up_model(tiny_model_dir, tmp_path / "c", dataclasses.replace(QUICK, seed=1), progress=False)
    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["lm_head.weight"], wc["lm_head.weight"])
    fingerprints = [read_warmup_info(d)["fingerprint"] for d in (a, b, c)]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def test_atomic_output(tiny_model_dir, tmp_path, monkeypatch):
    out = warm_up_model(tiny_model_dir, tmp_path / "warm", QUICK, progress=False)
    before = (out / "model.safetensors").read_bytes()

    def crash(base, tmp, settings, progress):  # dies after writing part of the new output
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(warmup, "_train", crash)
    with pytest.raises(RuntimeError, match="killed"):
        warm_up_model(tiny_model_dir, out, QUICK, force=True)
    assert (out / "model.safetensors").read_bytes() == before and (out / MARKER_FILE).is_file()  # old output intact
    assert [p.name for p in tmp_path.iterdir()] == ["warm"]  # no temp folder left behind


def test_refuses_foreign_folders(tiny_model_dir, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    with pytest.raises(VigosError, match="not a warm-up output"):
        warm_up_model(tiny_model_dir, tmp_path / "x", QUICK)
    assert (tmp_path / "x" / "precious.txt").read_text() == "keep me"
    with pytest.raises(VigosError, match="not a complete tiny-model build"):
        warm_up_model(tmp_path / "x", tmp_path / "y", QUICK)  # the cache key needs the base build's fingerprint


def test_cli(tiny_model_dir, tmp_path):
    from vigos.modeling.cli import app

    args = ["warm-up", "--base", str(tiny_model_dir), "--output", str(tmp_path / "w"), "--steps", "2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 steps, loss" in first.output and "done in" in first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already done" in again.output
