"""HFEngine on the tiny random Qwen2.5-VL with images: order, finish reasons, per-row seeds, greedy, padding."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from vigos.config import load_config
from vigos.data.prompts import build_messages, build_prompt_text
from vigos.generation import (
    Engine,
    GenerationRequest,
    HFEngine,
    SamplingParams,
    merge_shards,
    shard_for_rank,
)

SAMPLE = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, max_new_tokens=12)


@pytest.fixture(scope="module")
def prompts(tiny_processor):
    """Three prompts of different lengths (so batching pads them differently) and their images."""
    red = Image.new("RGB", (120, 90), (200, 30, 30))
    blue = Image.new("RGB", (64, 64), (20, 40, 220))
    items = [
        ("What color is the square?", [red]),
        ("How many cats sit on the sofa next to the blue lamp in the two pictures?", [red, blue]),
        ("Is the dog to the left of the car? Answer yes or no, then explain in great detail why you think so.", [blue]),
    ]
    return [(build_prompt_text(tiny_processor, build_messages(q, imgs)), imgs) for q, imgs in items]


def _requests(prompts, seeds):
    return [GenerationRequest(prompt=p, images=imgs, seed=s) for (p, imgs), s in zip(prompts, seeds, strict=True)]


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_processor):
    return HFEngine(tiny_model, tiny_processor, batch_size=8, cache_implementation=None)


def _eos_ids(tiny_processor):
    tok = tiny_processor.tokenizer
    return {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}


def _biased_model(tiny_model, token_id: int, bias: float):
    """A copy of the tiny model whose lm_head adds `bias` to one token's logit (test-only)."""
    model = copy.deepcopy(tiny_model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    model.lm_head = head
    return model


# ---------------------------------------------------------------------------------------------------- results


def test_results_count_order_and_fields(engine, prompts, tiny_processor):
    requests = _requests(prompts, [1, 2, 3])
    results = engine.generate(requests, SAMPLE)
    assert len(results) == 3
    lengths = [len(tiny_processor(text=[p], images=imgs)["input_ids"][0]) for p, imgs in prompts]
    assert len(set(lengths)) == 3  # really different prompt lengths
    for req, res, n in zip(requests, results, lengths, strict=True):
        assert res.seed == req.seed
        assert res.prompt_tokens == n
        assert 1 <= len(res.token_ids) <= SAMPLE.max_new_tokens
        assert res.finish_reason in ("stop", "length")
        body = res.token_ids[:-1] if res.finish_reason == "stop" else res.token_ids
        assert res.text == tiny_processor.tokenizer.decode(body, skip_special_tokens=False)
    # order: each result is the one its request gives alone
    for req, res in zip(requests, results, strict=True):
        assert engine.generate([req], SAMPLE)[0].token_ids == res.token_ids
    assert engine.generate([], SAMPLE) == []


def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, Engine)


def test_length_finish_when_eos_cannot_be_produced(tiny_model, tiny_processor, prompts):
    im_end, eot = sorted(_eos_ids(tiny_processor))
    model = _biased_model(tiny_model, im_end, -1e4)
    with torch.no_grad():
        model.lm_head.bias[eot] = -1e4
    eng = HFEngine(model, tiny_processor, batch_size=4, cache_implementation=None)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=9)
    for res in eng.generate(_requests(prompts, [5, 6, 7]), params):
        assert res.finish_reason == "length"
        assert len(res.token_ids) == 9
        assert not _eos_ids(tiny_processor) & set(res.token_ids)


def test_stop_finish_when_eos_is_produced(tiny_model, tiny_processor, prompts):
    im_end = tiny_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = _biased_model(tiny_model, im_end, 50.0)
    eng = HFEngine(model, tiny_processor, batch_size=4, cache_implementation=None)
    for res in eng.generate(_requests(prompts, [5, 6, 7]), SAMPLE):
        assert res.finish_reason == "stop"
        assert res.token_ids == [im_end]
        assert res.text == ""


def test_mixed_stop_and_length_rows_exclude_padding(tiny_model, prompts, tiny_processor):
    """Rows that stop early are padded inside the batch; their completions must not contain that padding."""
    eos = _eos_ids(tiny_processor)
    # EOS a few percent likely per step (e^8.5 against ~152k other logits): some rows stop early, others run to
    # the limit
    model = _biased_model(tiny_model, tiny_processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), 8.5)
    eng = HFEngine(model, tiny_processor, batch_size=8, cache_implementation=None)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=24)
    requests = [GenerationRequest(prompts[i % 3][0], prompts[i % 3][1], seed=100 + i) for i in range(16)]
    results = eng.generate(requests, params)
    stopped = [i for i, r in enumerate(results) if r.finish_reason == "stop"]
    assert stopped and len(stopped) < len(results)
    assert len({len(results[i].token_ids) for i in stopped}) > 1
    for res in results:
        if res.finish_reason == "stop":
            assert res.token_ids[-1] in eos and not eos & set(res.token_ids[:-1])
            assert len(res.token_ids) <= 24
        else:
            assert len(res.token_ids) == 24 and not eos & set(res.token_ids)
    for i in stopped[:2]:
        assert eng.generate([requests[i]], params)[0].token_ids == results[i].token_ids


# ---------------------------------------------------------------------------------------------------- seeds


def test_same_seed_same_tokens_alone_or_batched_with_different_padding(engine, prompts):
    target = GenerationRequest(prompts[0][0], prompts[0][1], seed=42)
    alone = engine.generate([target], SAMPLE)[0]
    others = _requests(prompts[1:], [7, 8])
    batched = engine.generate([others[0], target, others[1]], SAMPLE)[1]
    batched_again = engine.generate([target, *others, target], SAMPLE)
    assert alone.token_ids == batched.token_ids == batched_again[0].token_ids == batched_again[3].token_ids
    # chunking (batch_size 2) does not matter either
    small = HFEngine(engine.model, engine.processor, batch_size=2, cache_implementation=None)
    assert small.generate([*others, target], SAMPLE)[2].token_ids == alone.token_ids


def test_different_seeds_give_different_samples(engine, prompts):
    p, imgs = prompts[0]
    results = engine.generate([GenerationRequest(p, imgs, seed=42 + s) for s in range(5)], SAMPLE)
    assert len({tuple(r.token_ids) for r in results}) == 5
    assert [r.seed for r in results] == [42, 43, 44, 45, 46]


def test_global_rng_does_not_matter(engine, prompts):
    requests = _requests(prompts, [1, 2, 3])
    torch.manual_seed(0)
    a = engine.generate(requests, SAMPLE)
    torch.manual_seed(999)
    b = engine.generate(requests, SAMPLE)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_static_cache_path_matches_dynamic(tiny_model, tiny_processor, prompts, engine):
    """The GPU code path (bucketed prompt width, fixed batch with dummy rows, fixed cache length, stop criterion)
    runs eagerly on CPU and must give the same tokens as the dynamic-cache path."""
    requests = _requests(prompts, [11, 12, 13])
    static = HFEngine(tiny_model, tiny_processor, batch_size=2, cache_implementation="static", prompt_bucket=64)
    got = static.generate(requests, SAMPLE)
    stats = static.last_stats
    assert stats["chunks"] == 2 and stats["dummy_rows"] == 1
    assert all(w % 64 == 0 for w in stats["prompt_widths"])
    assert stats["cache_len"] % static.cache_bucket == 0
    want = engine.generate(requests, SAMPLE)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
    # the cache length never shrinks: a shorter call reuses it
    before = static.cache_len
    static.generate(requests[:1], SamplingParams(1.0, 1.0, 0, 2))
    assert static.cache_len == before


# ---------------------------------------------------------------------------------------------------- greedy


def test_top_k_one_equals_hf_greedy(tiny_model, tiny_processor, prompts, engine):
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=1, max_new_tokens=10)
    results = engine.generate(_requests(prompts, [1, 2, 3]), params)
    eos = sorted(_eos_ids(tiny_processor))
    for (p, imgs), res in zip(prompts, results, strict=True):
        inputs = tiny_processor(text=[p], images=imgs, return_tensors="pt")
        with torch.no_grad():
            out = tiny_model.generate(
                **inputs,
                do_sample=False,
                repetition_penalty=1.0,
                max_new_tokens=10,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
        ref = out[0, inputs["input_ids"].shape[1] :].tolist()
        assert res.token_ids == ref[: len(res.token_ids)]
        assert len(res.token_ids) == len(ref) or ref[len(res.token_ids)] in eos


# ---------------------------------------------------------------------------------------------------- misc


def test_keep_inputs_gives_each_rows_unpadded_processor_outputs(engine, prompts, tiny_processor):
    results = engine.generate(_requests(prompts, [1, 2, 3]), SAMPLE, keep_inputs=True)
    image_token = tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for (p, imgs), res in zip(prompts, results, strict=True):
        ref = tiny_processor(text=[p], images=imgs, return_tensors="pt")
        row = res.prompt_inputs
        assert torch.equal(row["input_ids"], ref["input_ids"])
        assert torch.equal(row["attention_mask"], ref["attention_mask"])
        assert torch.equal(row["image_grid_thw"], ref["image_grid_thw"])
        assert torch.equal(row["pixel_values"], ref["pixel_values"])
        merge = tiny_processor.image_processor.merge_size**2
        assert int((row["input_ids"] == image_token).sum()) == int(row["image_grid_thw"].prod(-1).sum()) // merge
    assert engine.generate(_requests(prompts, [1, 2, 3]), SAMPLE)[0].prompt_inputs is None


def test_training_mode_is_restored(tiny_model, tiny_processor, prompts):
    eng = HFEngine(tiny_model, tiny_processor, batch_size=4, cache_implementation=None)
    tiny_model.train()
    try:
        eng.generate(_requests(prompts[:1], [0]), SAMPLE, progress=True)
        assert tiny_model.training
    finally:
        tiny_model.eval()


def test_sampling_params_defaults_come_from_the_config():
    cfg = load_config("paper-7b")
    assert SamplingParams.from_eval(cfg.eval) == SamplingParams(1.0, 0.9, 20, 4096)
    assert SamplingParams.from_train(cfg.train) == SamplingParams(1.1, 0.95, 20, 4096)
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 4, **bad})


def test_shard_for_rank_round_trip():
    items = list(range(11))
    shards = [shard_for_rank(items, r, 4) for r in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 2]
    assert sorted(x for s in shards for x in s) == items
    assert merge_shards(shards) == items
    assert shard_for_rank(items, 0, 1) == items
    with pytest.raises(ValueError):
        shard_for_rank(items, 4, 4)
    with pytest.raises(ValueError):
        shard_for_rank(items, 0, 0)


# ---------------------------------------------------------------------------------------------------- own decode loop


def _same_results(got, want, *, exact_logprobs=True):
    for g, w in zip(got, want, strict=True):
        assert (g.token_ids, g.text, g.finish_reason, g.seed, g.prompt_tokens) == (
            w.token_ids, w.text, w.finish_reason, w.seed, w.prompt_tokens)
        if exact_logprobs:
            assert g.logprobs == w.logprobs
        else:
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
        assert (g.prompt_inputs is None) == (w.prompt_inputs is None)
        for key, value in (w.prompt_inputs or {}).items():
            assert torch.equal(g.prompt_inputs[key], value)


@pytest.fixture(scope="module")
def eos_likely_model(tiny_model, tiny_processor):
    """With top-k 50, EOS a few percent likely per step (the tiny model's logits lie within ~0.7 of each other):
    in a batch some rows stop early, others run to the limit. (Top-k keeps the hash sampler off the 152k vocab.)"""
    return _biased_model(tiny_model, tiny_processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), 1.5)


def test_vigos_decode_loop_equals_generate(eos_likely_model, tiny_processor, prompts):
    """Our loop (dynamic cache, eager) gives the `generate` path's rows bit for bit: prompts of different lengths,
    images of different sizes (and a text-only prompt), per-row seeds, EOS and length finishes, log-probabilities."""
    text_only = build_prompt_text(tiny_processor, build_messages("Name three prime numbers.", []))
    requests = [GenerationRequest(prompts[i % 3][0], prompts[i % 3][1], seed=100 + i) for i in range(5)]
    requests.append(GenerationRequest(text_only, [], seed=7))
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=16)
    hf = HFEngine(eos_likely_model, tiny_processor, batch_size=6, cache_implementation=None)
    ours = HFEngine(eos_likely_model, tiny_processor, batch_size=6, cache_implementation=None, decode="vigos",
                    check_every=4)
    want = hf.generate(requests, params, logprobs=True, keep_inputs=True)
    got = ours.generate(requests, params, logprobs=True, keep_inputs=True)
    reasons = [r.finish_reason for r in want]
    assert "stop" in reasons and "length" in reasons
    _same_results(got, want)


def test_vigos_decode_loop_static_cache_path(eos_likely_model, tiny_model, tiny_processor, prompts):
    """The GPU code path (static cache reused per bucket, fixed attention-mask buffer, dummy rows, bucketed widths),
    eagerly on CPU: the `generate` path's tokens (log-probabilities to float rounding: a static cache attends over
    the whole cache length); and the loop stops at the first host check after every row has finished."""
    requests = _requests(prompts, [11, 12, 13])
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=16)
    want = HFEngine(eos_likely_model, tiny_processor, batch_size=8, cache_implementation=None).generate(
        requests, params, logprobs=True)
    ours = HFEngine(eos_likely_model, tiny_processor, batch_size=2, cache_implementation="static", decode="vigos",
                    check_every=4)
    _same_results(ours.generate(requests, params, logprobs=True), want, exact_logprobs=False)
    assert ours.last_stats["dummy_rows"] == 1 and len(ours._decode_loop._buffers) == 1

    im_end = tiny_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    stopper = HFEngine(_biased_model(tiny_model, im_end, 50.0), tiny_processor, batch_size=3,
                       cache_implementation="static", decode="vigos", check_every=4)
    assert [r.token_ids for r in stopper.generate(requests, params)] == [[im_end]] * 3
    assert stopper._decode_loop.last_steps == 3  # checked after 4 drawn tokens, not run to 24


def test_vigos_decode_step_traces_once(tiny_model, tiny_processor, prompts):
    """Under torch.compile (the eager backend: dynamo's tracing and guards without a GPU) the decode step is one
    graph for every step and every call of the same shape: the step index is a tensor, nothing recompiles."""
    from torch._dynamo.utils import counters

    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, max_new_tokens=6)
    requests = _requests(prompts[:2], [1, 2])
    eng = HFEngine(tiny_model, tiny_processor, batch_size=2, cache_implementation="static", decode="vigos",
                   compile_decode={"backend": "eager"})
    before = counters["stats"]["unique_graphs"]
    first = eng.generate(requests, params)
    again = eng.generate(requests[::-1], params)
    assert counters["stats"]["unique_graphs"] - before == 1
    want = HFEngine(tiny_model, tiny_processor, batch_size=2, cache_implementation=None).generate(requests, params)
    assert [r.token_ids for r in first] == [r.token_ids for r in want] == [r.token_ids for r in again[::-1]]


def test_decode_option_is_checked(tiny_model, tiny_processor, prompts):
    with pytest.raises(ValueError, match="decode must be one of"):
        HFEngine(tiny_model, tiny_processor, decode="fast")
    eng = HFEngine(tiny_model, tiny_processor, batch_size=1, cache_implementation=None, decode="vigos",
                   compile_decode=True)
    with pytest.raises(ValueError, match="static cache"):
        eng.generate(_requests(prompts[:1], [0]), SAMPLE)
    from vigos.errors import VigosError
    from vigos.generation.decode import _check_transformers

    with pytest.raises(VigosError, match=r"needs transformers>=5\.24 \(this environment has 5\.19\.0\); set model"):
        _check_transformers("5.19.0")  # the vLLM evaluation image's
    _check_transformers("5.24.0.dev0")
