"""Segment parsing (docs/training.md): character rules, token offsets with real byte-level tokenizers, masks."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from vigos.training.segments import (
    EMPTY_DESCRIPTION,
    MISSING_BOX,
    MISSING_DESCRIPTION_CLOSE,
    MISSING_THINK_CLOSE,
    MISSING_THINK_OPEN,
    UNBALANCED_BOX,
    build_segment_masks,
    decode_with_offsets,
    parse_completion,
    parse_segments,
    token_range,
    token_spans,
)

# ---------------------------------------------------------------------------------------------------------------
# Character level: (id, text, reason or None if valid, description text, reasoning text, answer)

R = "</think> \\boxed{4}"
CASES = [
    ("basic", "A cat.</description>\n<think>It is a cat.</think> \\boxed{cat}", None,
     "A cat.", "It is a cat.</think> \\boxed{cat}", "cat"),
    ("text after the box", "d</description><think>r</think> \\boxed{4} and \\boxed{5} more", None,
     "d", "r</think> \\boxed{4}", "4"),
    ("several boxes: the first balanced one", "d</description><think>r</think>\\boxed{1}\\boxed{2}", None,
     "d", "r</think>\\boxed{1}", "1"),
    ("nested braces", "d</description><think>r</think> \\boxed{\\frac{1}{2}}.", None,
     "d", "r</think> \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("escaped braces are literal", "d</description><think>r</think> \\boxed{\\{1, 2\\}}", None,
     "d", "r</think> \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("escaped brace left open", "d</description><think>r</think> \\boxed{\\left\\{x\\right.}", None,
     "d", "r</think> \\boxed{\\left\\{x\\right.}", "\\left\\{x\\right."),
    ("double backslash then brace closes", "d</description><think>r</think> \\boxed{a\\\\}", None,
     "d", "r</think> \\boxed{a\\\\}", "a\\\\"),
    ("unclosed box skipped for a balanced nested one", "d</description><think>r</think> \\boxed{x \\boxed{5} y",
     None, "d", "r</think> \\boxed{x \\boxed{5}", "5"),
    ("box before </think> ignored", "d</description><think>\\boxed{3}</think> \\boxed{4}", None,
     "d", "\\boxed{3}</think> \\boxed{4}", "4"),
    ("box only before </think>", "d</description><think>\\boxed{3}</think> so 3", MISSING_BOX, None, None, None),
    ("no box", "d</description><think>r</think> the answer is 4", MISSING_BOX, None, None, None),
    ("boxed without brace", "d</description><think>r</think> \\boxed 4", MISSING_BOX, None, None, None),
    ("unbalanced box", "d</description><think>r</think> \\boxed{4", UNBALANCED_BOX, None, None, None),
    ("unbalanced nested box", "d</description><think>r</think> \\boxed{\\frac{1}{2}", UNBALANCED_BOX,
     None, None, None),
    ("escaped closing brace", "d</description><think>r</think> \\boxed{4\\}", UNBALANCED_BOX, None, None, None),
    ("no </description>", "d<think>r</think> \\boxed{4}", MISSING_DESCRIPTION_CLOSE, None, None, None),
    ("empty text", "", MISSING_DESCRIPTION_CLOSE, None, None, None),
    ("no <think>", "d</description>r</think> \\boxed{4}", MISSING_THINK_OPEN, None, None, None),
    ("<think> before </description>", "<think>d</description>r" + R, MISSING_THINK_OPEN, None, None, None),
    ("no </think>", "d</description><think>r \\boxed{4}", MISSING_THINK_CLOSE, None, None, None),
    ("</think> before <think>", "d</description></think><think>r \\boxed{4}", MISSING_THINK_CLOSE,
     None, None, None),
    ("empty description", "</description><think>r" + R, EMPTY_DESCRIPTION, None, None, None),
    ("whitespace-only description is non-empty", " \n</description><think>r" + R, None,
     " \n", "r" + R, "4"),
    ("first </description> wins", "a</description>b</description><think>r" + R, None, "a", "r" + R, "4"),
    ("tags inside the description", "see <think> x</description><think>r" + R, None,
     "see <think> x", "r" + R, "4"),
    ("first <think> and </think> win", "d</description><think>a<think>b</think>c</think> \\boxed{4}", None,
     "d", "a<think>b</think>c</think> \\boxed{4}", "4"),
    ("truncated before the box", "d</description><think>a long chain of", MISSING_THINK_CLOSE, None, None, None),
]


@pytest.mark.parametrize("text,reason,desc,reas,answer", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_segments(text, reason, desc, reas, answer):
    seg = parse_segments(text)
    assert seg.valid is (reason is None)
    assert seg.reason == reason
    if reason is None:
        d0, d1 = seg.description
        r0, r1 = seg.reasoning
        assert d0 == 0 and text[d0:d1] == desc
        assert text[r0:r1] == reas
        assert seg.answer == answer
        assert text[seg.box[0]:seg.box[1]] == f"\\boxed{{{answer}}}"
        assert text[r0 - len("<think>"):r0] == "<think>"
        assert text[d1:d1 + len("</description>")] == "</description>"
    else:
        assert seg.description is None and seg.reasoning is None


def test_invalid_parse_still_reports_found_parts():
    seg = parse_segments("</description><think>r</think> \\boxed{7}")
    assert seg.reason == EMPTY_DESCRIPTION and seg.answer == "7"
    assert seg.description_close == (0, 14) and seg.think_open == (14, 21)
    seg = parse_segments("d</description><think>r")
    assert seg.description_close == (1, 15) and seg.think_close is None and seg.answer is None


def test_truncation_is_recorded():
    text = "d</description><think>r</think> \\boxed{4}"
    assert parse_segments(text, truncated=True).valid and parse_segments(text, truncated=True).truncated
    assert not parse_segments(text).truncated
    seg = parse_segments(text[:-1], truncated=True)
    assert not seg.valid and seg.truncated and seg.reason == UNBALANCED_BOX


# ---------------------------------------------------------------------------------------------------------------
# Token ranges from offsets


@pytest.mark.parametrize("offsets,span,expected", [
    ([(0, 2), (2, 4), (4, 6)], (0, 4), (0, 2)),
    ([(0, 2), (2, 5), (5, 6)], (0, 4), (0, 2)),  # token straddling the end belongs
    ([(0, 2), (2, 5), (5, 6)], (3, 6), (1, 3)),  # token straddling the start belongs
    ([(0, 2), (2, 4), (4, 6)], (2, 2), (0, 0)),  # empty span
    ([(0, 2), (2, 4), (4, 4)], (0, 4), (0, 2)),  # zero-width token at the edge (EOS) does not
    ([(0, 2), (2, 2), (2, 4)], (0, 4), (0, 3)),  # zero-width token strictly inside does
    ([(0, 2), (1, 3), (3, 4)], (2, 3), (1, 2)),  # tokens sharing a character
    ([(0, 2), (2, 4)], (5, 9), (0, 0)),
])
def test_token_range(offsets, span, expected):
    assert token_range(offsets, span) == expected


def test_token_range_none():
    assert token_range([(0, 1)], None) == (0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Real tokenizers, built offline


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


B2U = _bytes_to_unicode()
EOS = "<|im_end|>"
PAD = "<|endoftext|>"


def piece_tokenizer(pieces: list[bytes]) -> tuple[Tokenizer, list[int]]:
    """A byte-level BPE tokenizer whose vocabulary holds exactly these byte pieces (+ all single bytes, EOS, PAD);
    returns it and the ids spelling the pieces in order (the pieces may split UTF-8 characters)."""
    vocab: dict[str, int] = {}
    for b in range(256):
        vocab.setdefault(B2U[b], len(vocab))
    for p in pieces:
        vocab.setdefault("".join(B2U[b] for b in p), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, PAD])
    return tok, [vocab["".join(B2U[b] for b in p)] for p in pieces]


@pytest.fixture(scope="module")
def trained_tokenizer() -> Tokenizer:
    """A tiny byte-level BPE trained on ViGOS-shaped text (tags end up split over several tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [("A red cube on a table.</description>\n<think>The cube is red, so the answer is red.</think> "
               "\\boxed{red}")] * 20 + ["café naïve 中文 emoji 🙂 déjà vu, x^{2}+1 = \\frac{1}{2}"] * 5
    trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def test_straddling_tokens_belong_to_the_span():
    pieces = [b"A cat", b".</", b"description>", b"<think>", b"ok", b"</think> \\boxed{", b"4", b"}.", b" bye"]
    tok, ids = piece_tokenizer(pieces)
    eos = tok.token_to_id(EOS)
    p = parse_completion(tok, ids + [eos], eos_token_ids=eos)
    assert p.text == b"".join(pieces).decode()
    assert p.valid and p.has_eos and not p.truncated
    assert p.description_tokens == (0, 2)  # ".</" carries the description's last character
    assert p.reasoning_tokens == (4, 8)  # from "ok" to "}." (the closing brace merged with text after the box)
    assert p.offsets[-1] == (len(p.text), len(p.text))  # EOS: empty range at the end, in no span


def test_tag_end_merged_with_reasoning():
    pieces = [b"d</description><think", b">\nr", b"</think>\\boxed{1}", b"\n"]
    tok, ids = piece_tokenizer(pieces)
    p = parse_completion(tok, ids, eos_token_ids=tok.token_to_id(EOS))
    assert p.valid and p.truncated  # no EOS: the length limit was hit after the box
    assert p.segments.truncated
    assert p.description_tokens == (0, 1) and p.reasoning_tokens == (1, 3)


def test_multibyte_characters_split_across_tokens():
    # "中" = e4 b8 ad split over three tokens, the first also carrying "a"; 🙂 = 4 single-byte tokens
    pieces = [b"a\xe4", b"\xb8", b"\xad", b"\xf0", b"\x9f", b"\x99", b"\x82",
              b"</description><think>", b"\xc3", b"\xa9</think>\\boxed{", b"1}"]
    tok, ids = piece_tokenizer(pieces)
    text, offsets = decode_with_offsets(tok, ids)
    assert text == b"".join(pieces).decode() == "a中🙂</description><think>é</think>\\boxed{1}"
    assert offsets[:7] == [(0, 2), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3), (2, 3)]
    p = parse_completion(tok, ids, eos_token_ids=[tok.token_to_id(EOS)])
    assert p.valid and p.description_tokens == (0, 7)
    assert p.reasoning_tokens == (8, 11)  # the lone byte c3 starts "é", the first reasoning character


def test_decode_matches_tokenizer_on_random_ids(trained_tokenizer):
    tok = trained_tokenizer
    rng = random.Random(0)
    specials = {tok.token_to_id(EOS), tok.token_to_id(PAD)}
    pool = [i for i in range(tok.get_vocab_size()) if i not in specials]
    for _ in range(30):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 60))]
        text, offsets = decode_with_offsets(tok, ids)
        assert text == tok.decode(ids, skip_special_tokens=False)
        assert len(offsets) == len(ids)
        for (s0, e0), (s1, e1) in itertools.pairwise(offsets):
            assert s0 <= s1 and e0 <= e1
        covered = set()
        for s, e in offsets:
            assert 0 <= s <= e <= len(text)
            covered.update(range(s, e))
        assert covered == set(range(len(text)))


def test_decode_matches_the_real_qwen_vocabulary_on_random_ids(tiny_processor):
    """Qwen's 151,643 BPE entries: random ids split multi-byte characters in every way the real model can."""
    tok = tiny_processor.tokenizer.backend_tokenizer
    rng = random.Random(1)
    for _ in range(30):
        ids = [rng.randrange(151643) for _ in range(rng.randint(0, 60))]
        text, offsets = decode_with_offsets(tiny_processor.tokenizer, ids)
        assert text == tok.decode(ids, skip_special_tokens=False)
        assert len(offsets) == len(ids)
        assert all(s0 <= s1 and e0 <= e1 for (s0, e0), (s1, e1) in itertools.pairwise(offsets))
        assert {c for s, e in offsets for c in range(s, e)} == set(range(len(text)))


def test_real_tokenizer_tags_split_across_tokens(trained_tokenizer):
    tok = trained_tokenizer
    text = "A red cube, 中文 🙂.</description>\n<think>The cube is red.</think> \\boxed{\\frac{1}{2}}. Done."
    enc = tok.encode(text)
    assert "</description>" not in enc.tokens and "<think>" not in enc.tokens  # tags are split
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    ids = enc.ids + [eos, pad, pad]
    p = parse_completion(tok, ids, eos_token_ids=[eos, pad])
    assert p.text == text and p.valid and p.segments.answer == "\\frac{1}{2}"
    assert p.num_tokens == len(enc.ids) + 1  # content + EOS, padding dropped
    d0, d1 = p.description_tokens
    r0, r1 = p.reasoning_tokens
    assert tok.decode(enc.ids[d0:d1]).startswith("A red cube, 中文 🙂.")
    assert "</description>" not in tok.decode(enc.ids[d0:d1])
    reasoning = tok.decode(enc.ids[r0:r1])
    assert reasoning.startswith(("The cube", ">"))
    assert "</think> \\boxed{\\frac{1}{2}}" in reasoning and "Done" not in reasoning
    # offsets agree with the tokenizer's own offset mapping for this (ASCII-heavy, re-encodable) text
    assert list(p.offsets[:-1]) == [tuple(o) for o in enc.offsets]
    assert token_spans(p.segments, p.offsets) == (p.description_tokens, p.reasoning_tokens)


def test_added_tag_tokens_are_kept(trained_tokenizer):
    tok = Tokenizer.from_str(trained_tokenizer.to_str())
    tok.add_tokens(["<think>", "</think>"])
    text = "d</description><think>r</think> \\boxed{2}"
    ids = tok.encode(text).ids
    assert tok.token_to_id("<think>") in ids
    p = parse_completion(tok, ids, eos_token_ids=tok.token_to_id(EOS))
    assert p.text == text and p.valid
    think = ids.index(tok.token_to_id("<think>"))
    assert p.description_tokens[1] <= think and p.reasoning_tokens[0] == think + 1


def test_metaspace_decoder_windowing():
    vocab = {"<unk>": 0, "▁hello": 1, "▁world": 2, "!": 3, "</description><think>": 4, "</think>\\boxed{1}": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Metaspace()
    ids = [1, 2, 3] * 20 + [4, 1, 5]
    text, offsets = decode_with_offsets(tok, ids)
    assert text == tok.decode(ids)
    assert text.startswith("hello world! hello") and offsets[0] == (0, 5) and offsets[1] == (5, 11)
    assert parse_segments(text).valid


def test_transformers_fast_tokenizer(trained_tokenizer):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(trained_tokenizer.to_str()),
                                 eos_token=EOS, pad_token=PAD)
    text = "cube .</description> <think>red ,</think> \\boxed{red} ."  # clean-up would rewrite " ." and " ,"
    ids = hf(text, add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
    p = parse_completion(hf, ids, eos_token_ids=hf.eos_token_id)
    assert p.text == text and p.valid
    assert p.segments.description == (0, len("cube ."))


# ---------------------------------------------------------------------------------------------------------------
# Batch masks


def test_segment_masks():
    pieces = [b"a", b"b</description>", b"<think>", b"r", b"</think>\\boxed{1}", b" x", b"r2", b" no box"]
    tok, ids = piece_tokenizer(pieces)
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    a, bdesc, think, r, close, x, r2, nobox = ids
    valid = parse_completion(tok, [a, bdesc, think, r, close, x, eos, pad], eos_token_ids=[eos, pad])
    invalid = parse_completion(tok, [a, bdesc, think, r2, nobox, eos], eos_token_ids=eos)
    cut = parse_completion(tok, [a, bdesc, think, r], eos_token_ids=eos)  # truncated before the box
    assert valid.valid and not invalid.valid and not cut.valid
    m = build_segment_masks([valid, invalid, cut], seq_len=9)
    T, F = True, False
    assert m.description.tolist() == [[T, T] + [F] * 7, [F] * 9, [F] * 9]
    assert m.reasoning.tolist() == [[F, F, F, T, T] + [F] * 4, [F] * 9, [F] * 9]
    assert m.reference.tolist() == [[F] * 9, [T] * 6 + [F] * 3, [T] * 4 + [F] * 5]  # EOS in, padding out
    assert m.completion.sum(1).tolist() == [7, 6, 4]
    assert m.valid.tolist() == [T, F, F] and m.truncated.tolist() == [F, F, T]
    assert m.description_last.tolist() == [1, -1, -1] and m.reasoning_first.tolist() == [3, -1, -1]
    clips = m.clip_values(0.05, description_last_clip=0.01, reasoning_first_clip=0.5)
    assert clips.dtype == torch.float32 and clips.shape == (3, 9)
    assert clips[0, 1].item() == pytest.approx(0.01) and clips[0, 3].item() == pytest.approx(0.05)
    assert (clips[1:] == 0.05).all() and (clips[0, [0, 2, 4, 5]] == 0.05).all()
    assert build_segment_masks([valid, invalid]).description.shape == (2, 7)
    with pytest.raises(ValueError):
        build_segment_masks([valid], seq_len=4)


def test_tensor_inputs():
    tok, ids = piece_tokenizer([b"d</description><think>", b"r</think>\\boxed{1}"])
    eos = tok.token_to_id(EOS)
    a = parse_completion(tok, torch.tensor(ids + [eos, eos]), eos_token_ids=torch.tensor(eos))
    b = parse_completion(tok, ids + [eos], eos_token_ids=[eos])
    assert a == b and a.valid and a.num_tokens == 3
