"""The Hub model card (README.md): the ViGOS-7B seed card's shape, filled with what THIS run used and measured.

Front matter: `base_model`, `datasets`, `license`, `pipeline_tag`, `library_name`, `tags`, and a `model-index` with
one result per benchmark metric (Pass@k and Avg@k per main benchmark, Score and Prior per ViLP setting), written by
huggingface_hub's own `ModelCardData` so that its parser (`ModelCard(text).data.eval_results`) reads it back. The
mean across benchmarks is not a dataset, so it lives only in the body's table.

Body: the seed card's sections in its order (the ViGOS-7B model card the project started from). The hyper-parameter table and the
training data come from the TRAINING run's config dict (`VigosConfig.to_dict()` as the trainer recorded it beside the
adapter: sections `data`, `train`, `lora`, `eval`, `prompt`), the decoding table and the subset note from the
EVALUATION actually run (its recorded settings and the scores; the config's `eval` section only where the
evaluation recorded nothing), the results tables from the scores JSON (docs/architecture.md contract). Facts about the
METHOD (the paper, the output format, the citation, the usage snippet's prompt) are constants here, copied from the
seed card.

Names: `base_model` and `datasets` in the front matter are Hub ids. A base model or dataset given as a local path is
named by the Hub id its folder records (`provenance.hub_id`); without one the field is left out and the text names
the folder (never its path) and says why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vigos.evaluation.report import MAIN_BENCHMARKS, VILP_BENCHMARKS
from vigos.publish.provenance import hub_id, local_name, subset_cap, subset_parts

DISPLAY_NAMES = {
    "mm-vet": "MM-Vet", "mmmu": "MMMU", "mmmu-pro": "MMMU-Pro", "mathverse": "MathVerse", "mathvista": "MathVista",
    "mmsi": "MMSI", "realworldqa": "RealWorldQA", "cv-bench": "CV-Bench", "vilp-f": "ViLP-F", "vilp-p": "ViLP-P",
}
TAGS = ["vigos", "qwen2_5_vl", "multimodal", "vision-language", "reasoning", "lora", "self-distillation"]
TASK_TYPE = "image-text-to-text"
TASK_NAME = "Multimodal reasoning"
PAPER_TITLE = ("Seeing Before Reasoning: Decoupling Perception and Reasoning for Shortcut-Resilient Multimodal "
               "On-Policy Self-Distillation")
PAPER_URL = "https://arxiv.org/abs/2606.19120"
PAPER_AUTHORS = "Sihan Wang, Xiyao Liu, Lianqing Liu, Zhi Han"
METHOD_CODE = "https://github.com/OedoSoldier/ViGOS"
OUTPUT_FORMAT = r"<description>...</description><think>...</think>\boxed{...}"
TRAINING_METHODS = {
    "vigos": "Segment-wise multimodal on-policy self-distillation",
    "opsd": "On-policy self-distillation (vanilla OPSD, the paper's baseline)",
}
LICENSE_NAMES = {"apache-2.0": "Apache license 2.0", "mit": "MIT license"}

CITATION = """@misc{wang2026seeing,
  title={Seeing Before Reasoning: Decoupling Perception and Reasoning for Shortcut-Resilient Multimodal On-Policy Self-Distillation},
  author={Wang, Sihan and Liu, Xiyao and Liu, Lianqing and Han, Zhi},
  year={2026},
  eprint={2606.19120},
  archivePrefix={arXiv},
  primaryClass={cs.LG},
  url={https://arxiv.org/abs/2606.19120}
}"""

# The seed card's snippet, verbatim but for the @...@ placeholders. Its `prompt` is an f-string that renders
# exactly `vigos.data.prompts.format_student_prompt(question, <the run's prompt.student>)` (a test checks it): the
# text the published model was trained and evaluated with (the seed card showed its user-facing paraphrase).
USAGE_SNIPPET = '''import torch
from transformers import Qwen2_5_VLForConditionalGeneration, AutoProcessor
from qwen_vl_utils import process_vision_info

MODEL_ID = "@MODEL_ID@"

model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
    MODEL_ID,
    torch_dtype="auto",
    device_map="auto",
)
processor = AutoProcessor.from_pretrained(MODEL_ID)

image_path = "path/to/image.jpg"
question = "What is the answer to the visual question?"

prompt = @PROMPT@

messages = [
    {
        "role": "user",
        "content": [
            {"type": "image", "image": image_path},
            {"type": "text", "text": prompt},
        ],
    }
]

text = processor.apply_chat_template(
    messages,
    tokenize=False,
    add_generation_prompt=True,
)
image_inputs, video_inputs = process_vision_info(messages)
inputs = processor(
    text=[text],
    images=image_inputs,
    videos=video_inputs,
    padding=True,
    return_tensors="pt",
).to(model.device)

with torch.no_grad():
    generated_ids = model.generate(
        **inputs,
        max_new_tokens=@MAX_NEW_TOKENS@,
        do_sample=True,
        temperature=@TEMPERATURE@,
        top_p=@TOP_P@,
        top_k=@TOP_K@,
    )

generated_ids_trimmed = [
    out_ids[len(in_ids):] for in_ids, out_ids in zip(inputs.input_ids, generated_ids)
]
output_text = processor.batch_decode(
    generated_ids_trimmed,
    skip_special_tokens=True,
    clean_up_tokenization_spaces=False,
)[0]

print(output_text)'''


def render_model_card(
    *,
    repo_id: str,
    base_model: str,
    train_config: Mapping[str, Any],
    scores: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    license: str,  # noqa: A002 - the Hub's metadata field is called `license`
    num_gpus: int,
    gpu_type: str,
    dataset: str | None = None,
    eval_settings: Mapping[str, Any] | None = None,
) -> str:
    """README.md text for `repo_id`.

    `base_model`: the base model's Hub id or local path (see the module doc: no local path reaches the card).
    `train_config`: `VigosConfig.to_dict()` of the training run (sections `data`, `train`, `lora`, `eval`, `prompt`).
    `num_gpus` / `gpu_type`: the training hardware (0 GPUs: CPU).
    `baseline`: the base model's scores from the same run (a column beside ours), or None.
    `dataset`: the training data's name; None: the training config's `data.source` (with its split / max_samples
    when narrowed).
    `eval_settings`: what the evaluation recorded (`provenance.eval_settings`: `sampling`, `seed`, and
    `max_examples` when known); the decoding table and the subset note follow it.
    """
    from vigos.evaluation.metrics import is_vilp

    name = repo_id.rstrip("/").split("/")[-1]
    train, lora, ev = (dict(train_config.get(k) or {}) for k in ("train", "lora", "eval"))
    settings = dict(eval_settings or {})
    ev |= {key: value for key, value in (settings.get("sampling") or {}).items() if value is not None}
    if settings.get("seed") is not None:
        ev["seed"] = settings["seed"]
    k = _k(scores, ev)
    base = _Name(base_model, "model")
    trained_on = train_config.get("data") or {}
    data = (_Name(dataset, "dataset") if dataset is not None
            else _Name(str(trained_on.get("source") or ""), "dataset", subset_parts(trained_on)))
    front = _front_matter(name, base.hub_id, data.hub_id, license, scores, k)
    method = train.get("method", "vigos")
    bench_names = [n for n in _ordered(scores.get("benchmarks") or {}, MAIN_BENCHMARKS) if not is_vilp(n)]
    vilp_names = _ordered(scores.get("vilp") or {}, VILP_BENCHMARKS)
    base_label = f"{base.name.split('/')[-1]} (base)"
    cols = [name] + ([base_label] if baseline is not None else [])
    ev_rows = [("Maximum generated tokens", _int(ev.get("max_new_tokens"))),
               ("Number of samples per main benchmark question", _int(k or ev.get("n_samples"))),
               ("Temperature", _num(ev.get("temperature"))), ("Top-p", _fixed2(ev.get("top_p"))),
               ("Top-k", _int(ev.get("top_k"))), ("Random seed", _int(ev.get("seed")))]
    subset = subset_cap(scores, settings)
    lines = [
        front,
        f"# {name}: Visual Grounding On-Policy Self-Distillation",
        "",
        "## Model Details",
        "",
        *_table(("Field", "Value"), [
            ("Model name", name), ("Repository ID", repo_id), ("Model family", "ViGOS"),
            ("Model type", "Multimodal image-text-to-text / vision-language reasoning model"),
            ("Base model", base.text), ("Training method", TRAINING_METHODS.get(method, method)),
            ("Weight format", "Merged full weights"), ("Training data", data.text),
            ("Output format", f"`{OUTPUT_FORMAT}`"), ("Paper", f"[{PAPER_TITLE}]({PAPER_URL})"),
            ("Paper authors", PAPER_AUTHORS), ("Method code", METHOD_CODE),
            ("License", LICENSE_NAMES.get(license, license)),
        ]),
        "",
        f"This repository holds the merged full weights of `{base.name}` after ViGOS LoRA post-training on "
        f"`{data.name}`{data.extra}; no adapter is needed to use it.",
        "",
        *(line for note in (base.note, data.note) if note for line in (note, "")),
        "## Model Summary",
        "",
        "ViGOS stands for Visual Grounding On-Policy Self-Distillation. It is a multimodal post-training method for "
        "reducing shortcut behavior in on-policy self-distillation for vision-language models. In vanilla OPSD, the "
        "privileged teacher can see the reference answer while supervising the whole student rollout. For MLLMs, that "
        "can make the dense training signal overly answer-driven before the model has grounded its response in image "
        "evidence.",
        "",
        "ViGOS changes the supervision path by asking the student to first produce a visual description, then reason, "
        "then answer:",
        "",
        "```text",
        "<description> visual description </description>",
        "<think> reasoning process </think>",
        r"\boxed{FINAL ANSWER}",
        "```",
        "",
        "For valid training rollouts, ViGOS uses segment-wise teachers:",
        "",
        "- an image-only perception teacher supervises the description tokens;",
        "- a privileged reasoning teacher supervises reasoning and final-answer tokens after the student-generated "
        "description prefix exists;",
        "- a reference fallback teacher is used only for invalid or malformed rollouts to recover the required output "
        "format.",
        "",
        "At inference time, all teachers, reference answers, and segment masks are removed. The model receives only the "
        "image, the question or instruction, and the output-format prompt.",
        "",
        "## Intended Use",
        "",
        "This model is intended for research and development in multimodal reasoning tasks, including visual question "
        "answering, visual math and diagram reasoning, OCR- or chart-grounded reasoning, spatial reasoning, visual "
        "grounding, and shortcut/prior-sensitivity analysis.",
        "",
        "## Out-of-Scope Use",
        "",
        "This model should not be used as the sole decision-maker in high-stakes settings such as medical diagnosis, "
        "legal judgment, financial decision-making, safety-critical robotics, surveillance, identity verification, or "
        "other contexts where hallucinated or incorrect visual reasoning could cause harm.",
        "",
        "## How to Use",
        "",
        "```bash",
        "pip install git+https://github.com/huggingface/transformers accelerate",
        "pip install qwen-vl-utils[decord]",
        "```",
        "",
        "```python",
        usage_snippet(repo_id, ev, (train_config.get("prompt") or {}).get("student", "release")),
        "```",
        "",
        "## Recommended Answer Extraction",
        "",
        r"For benchmark-style evaluation, extract the final answer from the last `\boxed{...}` span. Outputs without a "
        "parseable final answer are counted as incorrect.",
        "",
        "## Training Details",
        "",
        f"This model was trained for {_length(train)} on {data.text} using {_hardware(num_gpus, gpu_type)}. The student "
        "is trained on on-policy rollouts, and the frozen teacher roles are used only to score the student-generated "
        "prefixes during training.",
        "",
        *_table(("Parameter", "Value"), hyperparameter_rows(train, lora, num_gpus, gpu_type)),
        "",
        "## Evaluation Protocol",
        "",
        f"For the main benchmarks, {_int(k or ev.get('n_samples'))} stochastic responses are sampled per example "
        f"and Pass@{k} / Avg@{k} reported. Pass@{k} checks whether at least one of the {k} sampled answers is "
        f"correct, while Avg@{k} is the mean correctness across all {k} samples."
        + _graders_sentence(scores) + _counts_sentence(scores),
        "",
        "For ViLP, one response is generated per prompt and Score / Prior reported. Score measures accuracy on visually "
        "diagnostic questions where the model must use the image, and Prior measures accuracy on prior-aligned "
        "questions where the common visual-language prior is correct.",
        "",
        *([f"Note: at most {subset} examples per benchmark were evaluated (a subset): these numbers are not "
           "comparable with full-benchmark results.", ""] if subset else []),
        "Evaluation decoding settings:",
        "",
        *_table(("Parameter", "Value"), ev_rows),
        "",
        "## Evaluation Results",
        "",
        "### Main Benchmarks",
        "",
        f"Pass@{k} / Avg@{k}, in percent:",
        "",
        *_table(("Benchmark", *cols), _main_rows(bench_names, scores, baseline)),
        "",
    ]
    if vilp_names:
        lines += [
            "### Prior-Sensitive ViLP Results",
            "",
            "Score / Prior, in percent:",
            "",
            *_table(("Setting", *cols), [
                (DISPLAY_NAMES.get(v, v), *(_vilp_pair(src, v) for src in (scores, baseline) if src is not None))
                for v in vilp_names
            ]),
            "",
        ]
    lines += [
        "## Ethical Considerations",
        "",
        "Users should validate the model carefully before deployment. The model can generate plausible but incorrect "
        "visual descriptions and rationales. In user-facing applications, consider presenting only concise final "
        "answers, or clearly mark generated descriptions and rationales as model-generated rather than authoritative "
        "evidence.",
        "",
        "## Citation",
        "",
        "Please cite the ViGOS paper if you use this model or method.",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def usage_snippet(repo_id: str, ev: Mapping[str, Any], student_prompt: str = "release") -> str:
    """The seed card's usage code for `repo_id`, prompting and sampling as the evaluation did."""
    values = {"MODEL_ID": repo_id, "MAX_NEW_TOKENS": str(int(ev["max_new_tokens"])),
              "TEMPERATURE": _num(ev.get("temperature")), "TOP_P": _fixed2(ev.get("top_p")),
              "TOP_K": str(int(ev["top_k"])), "PROMPT": _prompt_fstring(student_prompt)}
    out = USAGE_SNIPPET
    for key, value in values.items():
        out = out.replace(f"@{key}@", value)
    return out


def _prompt_fstring(name: str) -> str:
    """Python source of an f-string (of `question`) that renders the student prompt `name`."""
    from vigos.data.prompts import STUDENT_PROMPTS, check_student_prompt

    body = STUDENT_PROMPTS[check_student_prompt(name)].format(problem="\0")
    body = body.replace("\\", "\\\\").replace("{", "{{").replace("}", "}}").replace("\0", "{question}")
    return f'f"""{body}"""'


def hyperparameter_rows(train: Mapping[str, Any], lora: Mapping[str, Any], num_gpus: int,
                        gpu_type: str) -> list[tuple[str, str]]:
    """The seed card's training table, filled from the config actually used (plus warmup / weight decay when set)."""
    max_steps = int(train.get("max_steps", -1))
    length = (("Training steps", _int(max_steps)) if max_steps > 0
              else ("Training epochs", _epochs(train.get("num_train_epochs"))))
    # the recorded global batch (the trainer checks micro-batch x accumulation x ranks against it); a config
    # recorded before `global_batch_size` existed had an explicit accumulation to multiply out
    if train.get("global_batch_size"):
        batch = int(train["global_batch_size"])
    else:
        batch = int(train["per_device_train_batch_size"]) * int(train["gradient_accumulation_steps"]) * max(1, num_gpus)
    rows = [
        length,
        ("GPUs", _hardware(num_gpus, gpu_type)),
        ("Effective batch size", str(batch)),
        # the trainer builds torch AdamW with fused=True on CUDA (vigos.training.trainer)
        ("Optimizer", "Fused AdamW" if num_gpus > 0 else "AdamW"),
        ("Learning rate", _num(train.get("learning_rate"))),
        ("LR scheduler", str(train.get("lr_scheduler_type", "")).replace("_", " ").capitalize()),
    ]
    if train.get("warmup_steps"):
        rows.append(("Warmup steps", _int(train["warmup_steps"])))
    if train.get("weight_decay"):
        rows.append(("Weight decay", _num(train["weight_decay"])))
    rows += [
        ("Maximum gradient norm", _num(train.get("max_grad_norm"))),
        ("Precision", "bf16" if train.get("bf16") else "fp32"),
        ("Distributed training", f"ZeRO-{train.get('zero_stage')}"),
        ("Maximum prompt length", _int(train.get("max_prompt_length"))),
        ("Maximum completion length", _int(train.get("max_completion_length"))),
        ("LoRA rank", _int(lora.get("r"))),
        ("LoRA alpha", _int(lora.get("alpha"))),
        ("LoRA dropout", _num(lora.get("dropout"))),
        ("LoRA target modules", _targets(str(lora.get("target_modules", "")))),
        ("Rollout temperature", _num(train.get("rollout_temperature"))),
        ("Rollout top-p / top-k", f"{_num(train.get('rollout_top_p'))} / {_int(train.get('rollout_top_k'))}"),
        # OPSD trains one privileged teacher with weight 1 (vigos.training.objective.combine): no λ applies
        *([("Teacher weight (OPSD, one privileged teacher)", "1")] if train.get("method") == "opsd" else [
            ("λ_perc", _num(train.get("lambda_perception"))),
            ("λ_rea", _num(train.get("lambda_reasoning"))),
            ("λ_ref", _num(train.get("lambda_reference")))]),
        ("Distillation temperature", _num(train.get("distill_temperature"))),
        ("KL clipping", _num(train.get("kl_token_clip"))),
    ]
    return rows


def eval_results(name: str, scores: Mapping[str, Any], k: int) -> list[Any]:
    """huggingface_hub `EvalResult`s: Pass@k and Avg@k per main benchmark, Score and Prior per ViLP setting."""
    from huggingface_hub import EvalResult

    from vigos.evaluation.metrics import is_vilp

    out = []
    metrics = [(n, (("pass_at_k", f"pass_at_{k}", f"Pass@{k}"), ("avg_at_k", f"avg_at_{k}", f"Avg@{k}")))
               for n in _ordered(scores.get("benchmarks") or {}, MAIN_BENCHMARKS) if not is_vilp(n)]
    metrics += [(n, (("score", "vilp_score", "Score"), ("prior", "vilp_prior", "Prior")))
                for n in _ordered(scores.get("vilp") or {}, VILP_BENCHMARKS)]
    shared = [_dataset_of(b) for b, _ in metrics]
    for bench, fields in metrics:
        row = (scores.get("benchmarks") or {}).get(bench) or (scores.get("vilp") or {}).get(bench) or {}
        hf_id, split = _dataset_of(bench)
        # the Hub groups results by (task, dataset id, config, split): ViLP-F and ViLP-P read the same dataset with
        # different prompts, so the setting goes in `config` or the two would merge into one result
        config = bench if shared.count((hf_id, split)) > 1 else None
        for key, metric_type, metric_name in fields:
            value = row.get(key)
            if value is None:  # nothing evaluated: the model-index has no "n/a"
                continue
            out.append(EvalResult(task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=hf_id,
                                  dataset_name=DISPLAY_NAMES.get(bench, bench), dataset_config=config,
                                  dataset_split=split,
                                  metric_type=metric_type, metric_value=round(float(value), 2),
                                  metric_name=metric_name))
    return out


class _Name:
    """A base model or dataset as the card shows it: by its Hub id, or by a local folder's name (never its path)
    with a note saying why the front matter does not name it."""

    def __init__(self, name_or_path: str, kind: str, qualifiers: list[str] | None = None) -> None:
        self.hub_id = hub_id(name_or_path) if name_or_path else None
        self.name = self.hub_id or local_name(name_or_path) or f"unknown {kind}"
        self.extra = f" ({', '.join(qualifiers)})" if qualifiers else ""
        self.text = self.name + ("" if self.hub_id else " (local, no Hub id)") + self.extra
        field = {"model": "base_model", "dataset": "datasets"}[kind]
        self.note = "" if self.hub_id else (
            f"The {'base model' if kind == 'model' else 'training data'} `{self.name}` was read from a local path "
            f"that records no Hugging Face Hub id, so the metadata above names no `{field}`.")


def _front_matter(name: str, base_model: str | None, dataset: str | None, license: str,  # noqa: A002
                  scores: Mapping[str, Any], k: int) -> str:
    from huggingface_hub import ModelCardData

    results = eval_results(name, scores, k)
    data = ModelCardData(base_model=base_model, datasets=[dataset] if dataset else None, license=license,
                         pipeline_tag=TASK_TYPE, library_name="transformers", tags=list(TAGS), model_name=name,
                         eval_results=results or None)
    return f"---\n{data.to_yaml()}\n---\n"


def _dataset_of(bench: str) -> tuple[str, str | None]:
    """(Hub dataset id, split) of a benchmark from the registry; unknown names stand for themselves."""
    from vigos.evaluation.benchmarks import BENCHMARKS

    spec = BENCHMARKS.get(bench)
    if spec is None:
        return bench, None
    return spec.subsets[0].hf_id, spec.subsets[0].split


def _ordered(section: Mapping[str, Any], preferred: tuple[str, ...]) -> list[str]:
    return [n for n in preferred if n in section] + [n for n in section if n not in preferred]


def _graders_sentence(scores: Mapping[str, Any]) -> str:
    """Which grader decided each benchmark ("rules (approximate)" for MM-Vet graded without its judge)."""
    from vigos.evaluation.metrics import benchmarks_by_grader

    names = benchmarks_by_grader(scores)
    if not names:
        return ""
    if len(names) == 1:
        return f" Answers were graded by {next(iter(names))}."
    return " Answers were graded by " + "; ".join(f"{g} ({', '.join(b)})" for g, b in names.items()) + "."


def _counts_sentence(scores: Mapping[str, Any]) -> str:
    """How many questions each benchmark's numbers rest on (the scores' `n_examples`)."""
    counts = []
    for section, order in (("benchmarks", MAIN_BENCHMARKS), ("vilp", VILP_BENCHMARKS)):
        rows = scores.get(section) or {}
        counts += [f"{DISPLAY_NAMES.get(b, b)} {int(rows[b]['n_examples']):,}" for b in _ordered(rows, order)
                   if isinstance(rows[b], Mapping) and rows[b].get("n_examples")]
    return f" Questions scored per benchmark: {', '.join(counts)}." if counts else ""


def _k(scores: Mapping[str, Any], ev: Mapping[str, Any]) -> int:
    for row in (scores.get("benchmarks") or {}).values():
        if row.get("k"):
            return int(row["k"])
    return int(ev.get("n_samples") or 0)


def _main_rows(names: list[str], scores: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[tuple]:
    sources = [s for s in (scores, baseline) if s is not None]
    rows = [(DISPLAY_NAMES.get(n, n), *(_pair((s.get("benchmarks") or {}).get(n)) for s in sources)) for n in names]
    mean = scores.get("mean") or {}
    if mean.get("pass_at_k") is not None:
        n_mean = len(mean.get("benchmarks") or names)
        rows.append((f"Mean across {n_mean} benchmarks", *(_pair(s.get("mean")) for s in sources)))
    return rows


def _pair(row: Mapping[str, Any] | None, a: str = "pass_at_k", b: str = "avg_at_k") -> str:
    if not row or row.get(a) is None or row.get(b) is None:
        return "-"
    return f"{row[a]:.2f} / {row[b]:.2f}"


def _vilp_pair(scores: Mapping[str, Any], name: str) -> str:
    return _pair((scores.get("vilp") or {}).get(name), "score", "prior")


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")  # a regex or a value with | must not split the row

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in r) + " |" for r in rows)]


def _length(train: Mapping[str, Any]) -> str:
    steps = int(train.get("max_steps", -1))
    if steps > 0:
        return f"{steps} optimizer step{'s' * (steps != 1)}"
    epochs = float(train.get("num_train_epochs", 1))
    return "one epoch" if epochs == 1 else f"{_epochs(epochs)} epochs"


def _hardware(num_gpus: int, gpu_type: str) -> str:
    return f"{num_gpus} × {gpu_type}" if num_gpus > 0 else "CPU"


def _targets(regex: str) -> str:
    """The LoRA target regex `.*language_model.*\\.(q_proj|...)` -> `q_proj, ... (language model)`."""
    m = re.search(r"\(([\w|]+)\)\$?$", regex)
    if not m:
        return f"`{regex}`"
    where = " (language model only)" if "language_model" in regex else ""
    return ", ".join(m.group(1).split("|")) + where


def _num(value: Any) -> str:
    """As the seed card writes numbers: 5e-06 -> 5e-6, 1.0 -> 1.0, 0.05 -> 0.05."""
    if value is None:
        return "-"
    x = float(value)
    if x != 0 and abs(x) < 1e-3:
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m.group(1) == '-' else ''}{m.group(2)}", f"{x:g}")
    return repr(x)


def _epochs(value: Any) -> str:
    x = float(1 if value is None else value)
    return str(int(x)) if x.is_integer() else repr(x)


def _int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _fixed2(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"
