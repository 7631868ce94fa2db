"""Packed forwards (`train.pack_sequences`) compute what the padded ones do, on the real Qwen vocabulary.

(a) for the student and every teacher role, rows of different lengths and image sizes packed into one sequence
    give the padded forward's hidden states at every position of every row, and the position masks select the same
    hidden states in the same order; (b) the objective's KL terms, loss and LoRA gradients match packed vs padded;
    (c) a scored token mapped past its own row is an error, not a read of the next row.
The sampler invariant with packing is in test_teachers.py (`test_student_logprobs_match_the_sampler`).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vigos.config import ModelConfig, load_config
from vigos.modeling.load import load_processor
from vigos.training import teachers as T
from vigos.training.objective import SEGMENTS, combine, segment_kl_terms, teacher_batches
from vigos.training.segments import build_segment_masks, parse_completion

SIZES = ((168, 84), (84, 140), (196, 56), (112, 112))
TEXTS = (  # two valid rollouts of different lengths, two invalid ones: every role gets rows
    "A red square on grey.</description>\n<think>\nOne square, so 1.</think> \\boxed{1}",
    "Green.</description>\n<think>\nIt is green and there are two of them in the picture.</think> \\boxed{2}",
    "no tags at all, just text",
    "<think>no description</think>\\boxed{3}",
)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    # a pixel budget larger than the tiny preset's, so each image is its own grid of visual tokens
    return load_processor(ModelConfig(name_or_path=str(tiny_model_dir), min_pixels=784, max_pixels=12544))


@pytest.fixture(scope="module")
def rollouts(processor):
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    parsed = [parse_completion(tok, tok.encode(t, add_special_tokens=False) + [eos], eos_token_ids=[eos])
              for t in TEXTS]
    assert [p.valid for p in parsed] == [True, True, False, False]
    examples = [SimpleNamespace(problem=f"<image>How many shapes? ({i})", answer=str(i + 1),
                                image=Image.new("RGB", size, (40 * i, 120, 200)))
                for i, size in enumerate(SIZES)]
    prompts = [T.context_text(processor, "student", ex.problem, ex.answer) for ex in examples]
    return examples, prompts, parsed


def _lora_model(tiny_model_dir):
    from vigos.modeling.load import load_model
    from vigos.modeling.lora import apply_lora

    # no LoRA dropout: its masks are drawn per [batch, seq] shape, so packed and padded would drop different units
    cfg = load_config("tiny", overrides=[f"model.name_or_path={tiny_model_dir}", "lora.dropout=0"])
    torch.manual_seed(0)
    model = apply_lora(load_model(cfg.model), cfg.lora)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter: the student differs from the teachers
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_packed_hidden_states_equal_padded_for_student_and_every_role(tiny_model, processor, rollouts):
    examples, prompts, parsed = rollouts
    cfg = load_config("tiny")
    masks = build_segment_masks(parsed)
    batches = {pack: teacher_batches(processor, cfg.train, examples, parsed, masks, pack=pack)
               for pack in (False, True)}
    assert set(batches[True]) == {"perception", "reasoning", "reference"}
    for pack in (False, True):
        batches[pack]["student"] = (
            T.build_sequences(processor, prompts, [ex.image for ex in examples], [p.token_ids for p in parsed],
                              [0] * len(parsed), pack=pack), masks.completion, list(range(len(parsed))))
    for role, (padded, comp_mask, rows) in batches[False].items():
        packed = batches[True][role][0]
        assert packed.input_ids.shape[0] == 1 and packed.attention_mask is None
        lengths = padded.attention_mask.sum(1)
        assert packed.cu_seqlens.diff().tolist() == lengths.tolist() and len(set(lengths.tolist())) > 1, role
        with torch.no_grad():
            h_pad, h_pack = T.hidden_states(tiny_model, padded), T.hidden_states(tiny_model, packed)
        for k in range(len(rows)):  # every position of every row, not only the scored ones
            start, n = int(packed.cu_seqlens[k]), int(lengths[k])
            torch.testing.assert_close(h_pack[0, start: start + n], h_pad[k, :n], atol=1e-5, rtol=1e-5)
        # the KL's position masks pick the same hidden states, in the same order
        scored_pad, scored_pack = h_pad[padded.positions(comp_mask)], h_pack[packed.positions(comp_mask)]
        assert scored_pad.shape[0] == int(comp_mask.sum()) > 0
        torch.testing.assert_close(scored_pack, scored_pad, atol=1e-5, rtol=1e-5)


def test_packed_loss_and_lora_gradients_equal_padded(tiny_model_dir, processor, rollouts):
    examples, prompts, parsed = rollouts
    model = _lora_model(tiny_model_dir)
    results = {}
    for pack in (False, True):
        t = load_config("tiny", overrides=[f"train.pack_sequences={str(pack).lower()}"]).train
        model.train()
        model.zero_grad(set_to_none=True)
        terms = segment_kl_terms(model, processor, t, examples, prompts, parsed, torch.device("cpu"), torch.float32)
        anchor = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        loss, _ = combine(terms, [terms[k].count if k in terms else 0 for k in SEGMENTS], t, anchor)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[pack] = (loss.detach(), {k: v.raw for k, v in terms.items()}, grads)
    (loss_pad, raw_pad, grads_pad), (loss_pack, raw_pack, grads_pack) = results[False], results[True]
    assert set(raw_pad) == {"perception", "reasoning", "reference"}
    assert loss_pad > 0
    torch.testing.assert_close(loss_pack, loss_pad, atol=1e-6, rtol=1e-5)
    for k in raw_pad:
        torch.testing.assert_close(raw_pack[k], raw_pad[k], atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads_pad.values())
    for name, g in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_packed_positions_stay_inside_their_row():
    cu = torch.tensor([0, 5, 9])
    offset = torch.tensor([2, 1])
    mask = torch.tensor([[True, True, False, False], [False, True, True, False]])
    pos = T.positions(mask, offset, 9, cu)
    assert pos.shape == (1, 9) and torch.nonzero(pos[0]).flatten().tolist() == [2, 3, 7, 8]
    with pytest.raises(ValueError, match="outside its sequence"):  # row 0's 4th token would be row 1's first
        T.positions(torch.tensor([[True, True, True, True], [False] * 4]), offset, 9, cu)
