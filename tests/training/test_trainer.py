"""The ViGOS trainer on the tiny model (CPU, DeepSpeed ZeRO-2 over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vigos.config import ConfigError, TrainConfig, load_config
from vigos.generation import GenerationResult
from vigos.training.checkpoint import MARKER, to_delete
from vigos.training.losses import KLTerms
from vigos.training.objective import combine, teacher_batches
from vigos.training.trainer import ViGOSTrainer, deepspeed_config, rollout_correct

VALID = "a red square on white</description><think>the square is red</think> \\boxed{red}"
INVALID = "a red square and no closing tag"


class FixedEngine:
    """Test double for the generation engine: returns canned completions (the same for every prompt), so the
    loss can be followed on fixed rollouts. The real engine is exercised by the other tests here."""

    def __init__(self, processor, texts):
        tok = processor.tokenizer
        self.eos_token_ids = (tok.convert_tokens_to_ids("<|im_end|>"),)
        self.completions = [tok(t, add_special_tokens=False)["input_ids"] + [self.eos_token_ids[0]] for t in texts]
        self.calls = 0
        self.assigned: dict[str, int] = {}

    def generate(self, requests, params):
        self.calls += 1
        out = []
        for r in requests:  # chosen by prompt, so a row keeps its completion whatever the data order
            slot = self.assigned.setdefault(r.prompt, len(self.assigned) % len(self.completions))
            ids = self.completions[slot]
            out.append(GenerationResult(list(ids), "", "stop", r.seed, 0))
        return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from vigos.data.synthetic import prepared_synthetic

    return prepared_synthetic(tmp_path_factory.mktemp("train-data"), n=24)


def tiny_cfg(model_dir, *overrides):
    return load_config("tiny", overrides=[f"model.name_or_path={model_dir}", *overrides])


def make_trainer(cfg, data, out, texts=None, **kw):
    from vigos.modeling.load import load_processor

    engine = FixedEngine(load_processor(cfg.model), texts) if texts else None
    return ViGOSTrainer(cfg, data, out, engine=engine, progress=False, **kw)


def lora_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_deepspeed_config_comes_from_the_typed_config():
    cfg = load_config("paper-7b")
    ds = deepspeed_config(cfg, 8)
    assert "train_batch_size" not in ds and "auto" not in json.dumps(ds)
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True
    assert ds["gradient_clipping"] == 0.1
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (1, 4)  # 1 x 4 x 8 = 32
    assert deepspeed_config(cfg, 2)["gradient_accumulation_steps"] == 16  # same global batch on 2 GPUs
    with pytest.raises(ConfigError, match="train.global_batch_size 32"):
        deepspeed_config(cfg, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # 3 prompts cannot be split into micro-batches of 2 (the 3-GPU case is in tests/test_config.py)
        (["train.global_batch_size=3", "train.per_device_train_batch_size=2"],
         "train.global_batch_size 3 is not a multiple of per-device batch 2 x 1 rank(s) = 2"),
        # an explicit accumulation that does not multiply out: 1 x 3 x 1 = 3, not 32
        (["train.global_batch_size=32", "train.gradient_accumulation_steps=3"],
         "per-device batch 1 x gradient accumulation 3 x 1 rank(s) = 3, not train.global_batch_size 32"),
        (["train.save_total_limit=0"], "train.save_total_limit is 0; it must be >= 1"),
    ],
)
def test_bad_batch_or_checkpoint_limit_fails_before_loading(tmp_path, overrides, message):
    # neither the model nor the dataset exists: the ConfigError must come first
    cfg = tiny_cfg(tmp_path / "no-model", *overrides)
    with pytest.raises(ConfigError) as e:
        ViGOSTrainer(cfg, tmp_path / "no-data", tmp_path / "out", progress=False)
    assert message in str(e.value)


def test_rollout_correct_grades_the_last_box_like_evaluation():
    assert rollout_correct("<think>half</think> \\boxed{0.5}", "1/2")  # the rule grader, not string equality
    assert rollout_correct("x</think> \\boxed{Red}", "red") and rollout_correct("\\boxed{3.0}", "3")
    # the LAST box anywhere counts, not the first box after </think>
    assert rollout_correct("</think> \\boxed{4} on second thought \\boxed{3}", "3")
    assert not rollout_correct("</think> \\boxed{3} on second thought \\boxed{4}", "3")
    assert rollout_correct("no think tag at all \\boxed{B}", "B")
    assert rollout_correct("\\boxed{circle}", "B", ["square", "circle"])  # an option's text answers its letter
    assert not rollout_correct("no box", "3") and not rollout_correct("\\boxed{3", "3")  # unclosed: no answer


def test_opsd_teacher_has_weight_one():
    """`method: opsd` borrows the reference slot for its one teacher, with weight 1 (not lambda_reference = 2)."""
    values = torch.tensor([0.2, 0.4])
    terms = {"reference": KLTerms(values, values, torch.zeros(2, dtype=torch.bool))}
    anchor = torch.zeros(())
    opsd, _ = combine(terms, [0.0, 0.0, 2.0], TrainConfig(method="opsd"), anchor)
    vigos, _ = combine(terms, [0.0, 0.0, 2.0], TrainConfig(method="vigos"), anchor)
    assert TrainConfig().lambda_reference == 2.0
    assert opsd.item() == pytest.approx(0.3) and vigos.item() == pytest.approx(0.6)


def test_only_language_model_lora_learns(tiny_model_dir, prepared, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, "train.max_steps=1", "train.global_batch_size=1")
    trainer = make_trainer(cfg, prepared, tmp_path / "out", texts=[VALID, INVALID])
    model = trainer.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert not any("lora_" in n and "visual" in n for n, _ in model.named_parameters())
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "one optimizer step changed nothing"
    assert all("lora_" in k and "language_model" in k for k in changed), sorted(changed)[:5]
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(tmp_path / "out" / "adapter")  # the processor travels with the adapter


def test_loss_falls_on_fixed_rollouts(tiny_model_dir, prepared, tmp_path, capsys):
    import datasets

    # one batch, seen at every step: a 2-row dataset and a micro-batch of 2
    datasets.load_from_disk(str(prepared)).select(range(2)).save_to_disk(str(tmp_path / "two"))
    cfg = tiny_cfg(tiny_model_dir, "train.max_steps=20", "train.global_batch_size=2",
                   "train.per_device_train_batch_size=2", "train.learning_rate=1e-2", "train.save_steps=100",
                   "train.kl_token_clip=10.0", "train.sample_log_steps=0")
    result = make_trainer(cfg, tmp_path / "two", tmp_path / "out", texts=[VALID, INVALID]).train()
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 20
    h0 = result.history[0]
    # both kinds of rollout reached their teachers: perception + reasoning (valid), reference (invalid)
    assert h0["loss_perception"] > 0 and h0["loss_reasoning"] > 0 and h0["loss_reference"] > 0
    assert h0["format_valid_rate"] == 0.5
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    # plain lines for logs (no terminal bar here): one every train.logging_steps (1), then the final save
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[vigos] train")]
    assert [line.split()[3].rstrip(":") for line in out[:-1]] == [f"{i}/20" for i in range(1, 21)]
    assert "s/step, about" in out[0] and "left" in out[0]
    assert out[-1].startswith("[vigos] training done (20 steps); writing the final adapter")


def test_reference_teacher_only_for_invalid_rollouts(tiny_model_dir, prepared, tmp_path):
    from vigos.training.segments import build_segment_masks, parse_completion

    cfg = tiny_cfg(tiny_model_dir, "train.max_steps=1")
    trainer = make_trainer(cfg, prepared, tmp_path / "out", texts=[VALID])
    tok = trainer.processor.tokenizer
    ex = [e for e in trainer._examples(0)[0] if e is not None]
    valid = [parse_completion(trainer.processor, tok(VALID + "<|im_end|>", add_special_tokens=False)["input_ids"],
                              eos_token_ids=trainer.eos_ids)] * len(ex)
    assert set(teacher_batches(trainer.processor, trainer.t, ex, valid, build_segment_masks(valid))) == {"perception", "reasoning"}
    invalid = [parse_completion(trainer.processor, tok(INVALID, add_special_tokens=False)["input_ids"],
                                eos_token_ids=trainer.eos_ids)] * len(ex)
    assert set(teacher_batches(trainer.processor, trainer.t, ex, invalid, build_segment_masks(invalid))) == {"reference"}
    trainer.cfg.train.method = trainer.t.method = "opsd"
    assert set(teacher_batches(trainer.processor, trainer.t, ex, valid, build_segment_masks(valid))) == {"reference"}


@pytest.mark.parametrize("sees_description", [False, True])
def test_reasoning_teacher_alignment(tiny_model_dir, prepared, tmp_path, sees_description):
    """Each teacher position scores exactly the student token it is aligned with."""
    from vigos.training.segments import build_segment_masks, parse_completion

    cfg = tiny_cfg(tiny_model_dir, f"train.reasoning_teacher_sees_description={str(sees_description).lower()}")
    trainer = make_trainer(cfg, prepared, tmp_path / "out", texts=[VALID])
    tok = trainer.processor.tokenizer
    ex = [e for e in trainer._examples(0)[0] if e is not None][:1]
    ids = tok(VALID + "<|im_end|>", add_special_tokens=False)["input_ids"]
    parsed = [parse_completion(trainer.processor, ids, eos_token_ids=trainer.eos_ids)]
    masks = build_segment_masks(parsed)
    batch, comp_mask, _ = teacher_batches(trainer.processor, trainer.t, ex, parsed, masks)["reasoning"]
    pos = batch.positions(comp_mask)
    # the token at position p+1 is the student token that position p predicts
    scored = batch.input_ids[0][1:][pos[0][:-1]].tolist()
    r0, r1 = parsed[0].reasoning_tokens
    assert scored == ids[r0:r1]
    text = tok.decode(batch.input_ids[0])
    assert ("a red square on white" in text) == sees_description
    assert ex[0].answer in text  # the privileged teacher sees the reference answer


def test_teacher_contexts(tiny_processor):
    from vigos.training import teachers as T

    q, a = "<image>What colour is the shape?", "vermilion"
    student = T.context_text(tiny_processor, "student", q, a)
    perception = T.context_text(tiny_processor, "perception", q, a)
    reasoning = T.context_text(tiny_processor, "reasoning", q, a)
    reference = T.context_text(tiny_processor, "reference", q, a)
    assert a not in student and a not in perception  # the answer never reaches the student or perception
    assert "colour" not in perception  # the perception teacher sees the image only
    assert a in reasoning and "colour" in reasoning and reasoning.endswith("<think>")
    assert a in reference and "<description>" in reference and reference.endswith("<description>")
    assert student.endswith("<|im_start|>assistant\n<description>")
    assert perception.endswith("<|im_start|>assistant\n")
    assert T.context_text(tiny_processor, "reasoning", q, a, sees_description=True).endswith("<description>")
    for text in (student, perception, reasoning, reference):
        assert text.count("<|image_pad|>") == 1 and "You are a helpful assistant." in text


def test_teacher_is_the_base_model_with_adapter_off(tiny_model_dir, tiny_processor, red_image):
    from vigos.modeling.load import load_model
    from vigos.modeling.lora import apply_lora
    from vigos.training import teachers as T

    cfg = tiny_cfg(tiny_model_dir)
    base = load_model(cfg.model)
    batch = T.build_sequences(tiny_processor, [T.context_text(tiny_processor, "student", "q?", "1")], [red_image],
                              [[5, 6, 7]], [0])
    with torch.no_grad():
        reference = T.hidden_states(base, batch)
    model = apply_lora(load_model(cfg.model), cfg.lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # make the adapter matter
    model.train()
    assert torch.allclose(T.teacher_hidden_states(model, batch), reference, atol=1e-5)
    assert model.training  # training mode restored
    with torch.no_grad():
        adapted = T.hidden_states(model.eval(), batch)
    assert not torch.allclose(adapted, reference, atol=1e-3)  # adapter re-enabled afterwards


def test_resume_equals_straight_run(tiny_model_dir, prepared, tmp_path):
    common = ["train.max_steps=4", "train.save_steps=2", "train.global_batch_size=2",
              "train.sample_log_steps=0"]
    straight = make_trainer(tiny_cfg(tiny_model_dir, *common), prepared, tmp_path / "a")
    straight_result = straight.train()
    expected = lora_state(straight.model)

    first = make_trainer(tiny_cfg(tiny_model_dir, *common), prepared, tmp_path / "b", interrupt_after_step=2)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert [p.parent.name for p in sorted((tmp_path / "b" / "checkpoints").glob(f"*/{MARKER}"))] == ["step-2"]
    resumed = make_trainer(tiny_cfg(tiny_model_dir, *common), prepared, tmp_path / "b")
    result = resumed.train()
    # the whole run's history: the first two steps come back from the checkpoint
    assert result.resumed_from == 2 and len(result.history) == 4
    assert [h["loss"] for h in result.history] == [h["loss"] for h in straight_result.history]
    got = lora_state(resumed.model)
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_bad_image_mid_training_is_skipped(tiny_model_dir, prepared, tmp_path):
    import datasets

    ds = datasets.load_from_disk(str(prepared))
    rows = ds.select(range(4)).to_list()
    for r in rows:  # the stored bytes, not decoded images
        r["images"] = [{"bytes": im["bytes"], "path": None} for im in r["images"]]
    rows[1]["images"] = [{"bytes": b"\x89PNG not really", "path": None}]
    broken = datasets.Dataset.from_list(rows, features=ds.features)
    broken.save_to_disk(str(tmp_path / "broken"))
    cfg = tiny_cfg(tiny_model_dir, "train.max_steps=1", "train.global_batch_size=4")
    result = make_trainer(cfg, tmp_path / "broken", tmp_path / "out").train()
    assert result.history[0]["skipped_rows"] == 1


def test_checkpointing_switches_per_micro_step_and_changes_no_number(tiny_model_dir, prepared, tmp_path,
                                                                     monkeypatch):
    """`auto` checkpoints a micro-step only when its student forward is longer than the threshold: forced here (the
    CPU resolves `auto` to off), a run with one micro-step of each kind per optimizer step must give the same
    losses, gradient norms and weights as an all-off and an all-on run, and the metric must say how often."""
    from vigos.training import memory

    cfg = tiny_cfg(tiny_model_dir, "train.max_steps=2", "train.global_batch_size=2", "train.save_steps=100",
                   "train.sample_log_steps=0")  # micro-batch 1, accumulation 2; lora dropout stays 0.05

    def run(limit, name):
        monkeypatch.setattr(memory, "resolve_checkpointing",
                            lambda *a: memory.CheckpointingChoice("auto", limit, "forced by the test"))
        trainer = make_trainer(cfg, prepared, tmp_path / name, texts=[VALID, INVALID])
        seen, recomputed = [], []  # (student positions, checkpointed) per micro-step; layer recomputes
        decide = trainer._checkpoint_for
        monkeypatch.setattr(trainer, "_checkpoint_for", lambda n: seen.append((n, decide(n))) or seen[-1][1])
        for m in trainer._switch.modules if trainer._switch else []:  # count the real checkpointed layer calls
            real = m._gradient_checkpointing_func
            m._gradient_checkpointing_func = lambda *a, real=real, **k: recomputed.append(1) or real(*a, **k)
        history = trainer.train().history
        return history, lora_state(trainer.model), seen, len(recomputed)

    off = run(None, "off")
    lengths = sorted({n for n, _ in off[2]})
    assert len(off[2]) == 4 and len(lengths) > 1 and off[3] == 0  # VALID and INVALID rollouts: two lengths
    assert all(h["loss"] > 0 and h["grad_norm"] > 0 for h in off[0])  # gradients to compare
    on = run(0, "on")
    mixed = run(lengths[0], "mixed")  # only the shortest forwards run without checkpointing
    assert [c for _, c in on[2]] == [True] * 4 and [c for _, c in off[2]] == [False] * 4
    assert [c for _, c in mixed[2]] == [n > lengths[0] for n, _ in mixed[2]]
    assert 0 < mixed[3] < on[3]  # the switch really turned the layers' recompute on and off
    for history, state, _, _ in (on, mixed):
        assert [(h["loss"], h["grad_norm"]) for h in history] == [(h["loss"], h["grad_norm"]) for h in off[0]]
        assert state.keys() == off[1].keys() and all(torch.equal(state[k], off[1][k]) for k in state)
    fraction = [h["checkpointed_micro_step_fraction"] for h in mixed[0]]
    assert fraction == [sum(c for _, c in mixed[2][2 * i : 2 * i + 2]) / 2 for i in range(2)] and 0 < sum(fraction)
    assert [h["checkpointed_micro_step_fraction"] for h in on[0] + off[0]] == [1.0, 1.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def peaky_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a 30x lm_head: a random tiny model is nearly uniform, so its KLs are ~1e-5 and float32
    rounding alone moves them by ~1e-3 relative; peaky distributions make the teachers disagree for real."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    out = tmp_path_factory.mktemp("peaky") / "model"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.mark.slow
def test_two_processes_match_one(peaky_model_dir, prepared, tmp_path, tracking_env):
    """torchrun with 2 ranks (gloo, ZeRO-2) and micro-batch 1 == one process with micro-batch 2."""
    tiny_model_dir = peaky_model_dir

    def run(nproc, per_device, out):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "vigos.training.launch", "--dataset", str(prepared), "--output", str(out), "--preset", "tiny",
               "--set", f"model.name_or_path={tiny_model_dir}", "--set", "train.max_steps=2",
               "--set", "train.global_batch_size=2",
               "--set", f"train.per_device_train_batch_size={per_device}", "--set", "train.kl_token_clip=10.0",
               # LoRA dropout masks come from each rank's RNG stream, which no layout can make equal
               "--set", "lora.dropout=0.0"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(Path(out, "trainer_state.json").read_text())["history"]

    one = run(1, 2, tmp_path / "one")
    two = run(2, 1, tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        assert a["loss"] > 1e-3
        assert a["completion_length"] == b["completion_length"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_an_epoch_sees_each_row_once_with_a_short_last_step(tiny_model_dir, prepared, tmp_path):
    """3 rows at 2 a step: 2 steps, the second with one row (its second micro-step empty); every row once. The
    logged accuracy and the rollout sample's `correct` use the evaluation grader (0.5 answers 1/2)."""
    import datasets

    ds = datasets.load_from_disk(str(prepared)).select(range(3))
    ds.map(lambda r: {"answer": "1/2"}).save_to_disk(str(tmp_path / "three"))
    cfg = tiny_cfg(tiny_model_dir, "train.max_steps=-1", "train.num_train_epochs=1", "train.global_batch_size=2",
                   "train.sample_log_steps=1", "train.save_steps=100")
    trainer = make_trainer(cfg, tmp_path / "three", tmp_path / "out",
                           texts=["a red square on white</description><think>half of it</think> \\boxed{0.5}"])
    assert trainer.accumulation == 2 and trainer.total_steps == 2
    result = trainer.train()
    assert len(result.history) == 2
    for h in result.history:
        assert h["skipped_rows"] == 0 and h["answer_accuracy"] == 1.0 and h["format_valid_rate"] == 1.0
        assert h["loss"] == h["loss"] and h["loss"] >= 0  # finite: the empty micro-step divides nothing by zero
    samples = [[json.loads(line) for line in (tmp_path / "out" / "rollouts" / f"step-{s:06d}.jsonl").open()]
               for s in (1, 2)]
    assert [len(s) for s in samples] == [2, 1]
    assert sorted(r["row"] for s in samples for r in s) == [0, 1, 2]
    assert all(r["correct"] is True and r["answer"] == "0.5" for s in samples for r in s)


def test_checkpoints_to_delete(tmp_path):
    for name in ("step-1", "step-2", "step-3", "step-10", "step-12", "step-x", "other"):
        (tmp_path / name).mkdir()
    for name in ("step-1", "step-3", "step-10", "step-12"):  # step-2: an interrupted save (no marker)
        (tmp_path / name / MARKER).write_text("{}")
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    # by number, not name; the unmarked one and the ones past the newest committed (torn, skipped) go too
    assert names(to_delete(tmp_path, 2, 10)) == ["step-1", "step-2", "step-12"]
    assert names(to_delete(tmp_path, 1, 3)) == ["step-1", "step-2", "step-10", "step-12"]
    assert names(to_delete(tmp_path, 5, 12)) == ["step-2"]


def test_checkpoint_rotation_and_resume(tiny_model_dir, prepared, tmp_path):
    out = tmp_path / "out"
    ckpt = out / "checkpoints"

    def steps_on_disk():
        return sorted(int(p.name.split("-")[1]) for p in ckpt.glob("step-*"))

    common = ["train.save_steps=1", "train.global_batch_size=1", "train.sample_log_steps=0"]
    first = make_trainer(tiny_cfg(tiny_model_dir, "train.max_steps=4", "train.save_total_limit=2", *common),
                         prepared, out, texts=[VALID, INVALID], interrupt_after_step=3)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert steps_on_disk() == [2, 3] and all((ckpt / f"step-{n}" / MARKER).is_file() for n in (2, 3))
    assert (ckpt / "step-3" / "adapter" / "adapter_config.json").exists()

    # a run that has nothing left to do resumes and saves nothing: it deletes nothing, even with a lower limit
    done = make_trainer(tiny_cfg(tiny_model_dir, "train.max_steps=3", "train.save_total_limit=1", *common),
                        prepared, out, texts=[VALID, INVALID])
    result = done.train()
    assert result.resumed_from == 3 and len(result.history) == 3 and steps_on_disk() == [2, 3]

    # the resumed-from checkpoint goes only once this run has saved a newer one (limit 1: just that one stays)
    resumed = make_trainer(tiny_cfg(tiny_model_dir, "train.max_steps=4", "train.save_total_limit=1", *common),
                           prepared, out, texts=[VALID, INVALID])
    result = resumed.train()
    assert result.resumed_from == 3 and len(result.history) == 4
    assert steps_on_disk() == [4] and (ckpt / "step-4" / MARKER).is_file()
