"""The generated model card: huggingface_hub parses its front matter back, the body follows the seed card's shape, and
the hyper-parameters are the ones passed in."""

from __future__ import annotations

import ast
import json
import re

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from vigos.config import load_config
from vigos.data.prompts import format_student_prompt
from vigos.evaluation.report import MODEL_CARD
from vigos.publish.model_card import render_model_card

# The ViGOS-7B model card's training table (the ViGOS-7B model card the project started from), row by row.
SEED_HYPERPARAMETERS = [
    ("Training epochs", "1"), ("GPUs", "8 × A100"), ("Effective batch size", "32"), ("Optimizer", "Fused AdamW"),
    ("Learning rate", "5e-6"), ("LR scheduler", "Linear"), ("Maximum gradient norm", "0.1"), ("Precision", "bf16"),
    ("Distributed training", "ZeRO-2"), ("Maximum prompt length", "32,768"), ("Maximum completion length", "4,096"),
    ("LoRA rank", "64"), ("LoRA alpha", "128"), ("LoRA dropout", "0.05"),
    ("LoRA target modules", "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (language model only)"),
    ("Rollout temperature", "1.1"), ("Rollout top-p / top-k", "0.95 / 20"), ("λ_perc", "1.0"), ("λ_rea", "1.0"),
    ("λ_ref", "2.0"), ("Distillation temperature", "1.0"), ("KL clipping", "0.05"),
]
SEED_DECODING = [("Maximum generated tokens", "4,096"), ("Number of samples per main benchmark question", "5"),
                 ("Temperature", "1.0"), ("Top-p", "0.90"), ("Top-k", "20"), ("Random seed", "42")]
SEED_SECTIONS = ["Model Details", "Model Summary", "Intended Use", "Out-of-Scope Use", "How to Use",
                 "Recommended Answer Extraction", "Training Details", "Evaluation Protocol", "Evaluation Results",
                 "Ethical Considerations", "Citation"]


def card_scores(shift: float = 0.0) -> dict:
    """The model card's own numbers in the scores JSON contract (shifted for a stand-in baseline)."""
    return {
        "benchmarks": {n: {"n_examples": 100, "k": 5, "pass_at_k": p - shift, "avg_at_k": a - shift}
                       for n, (p, a) in MODEL_CARD["benchmarks"].items()},
        "mean": {"pass_at_k": MODEL_CARD["mean"][0] - shift, "avg_at_k": MODEL_CARD["mean"][1] - shift,
                 "benchmarks": list(MODEL_CARD["benchmarks"]), "missing": []},
        "vilp": {n: {"score": s - shift, "prior": p - shift, "n_examples": 900, "k": 1}
                 for n, (s, p) in MODEL_CARD["vilp"].items()},
        "grader": "rules",
    }


def render(cfg=None, **kw) -> str:
    args = dict(repo_id="OedoSoldier/ViGOS-7B", base_model="Qwen/Qwen2.5-VL-7B-Instruct",
                train_config=(cfg or load_config()).to_dict(),
                scores=card_scores(), baseline=None, license="apache-2.0", num_gpus=8, gpu_type="A100")
    args.update(kw)
    return render_model_card(**args)


def table(text: str, section: str) -> dict[str, str]:
    """First `| a | b |` table after the `## section` heading, as {first cell: second cell}."""
    body = text.split(f"## {section}\n", 1)[1]
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines[start + 2:end]]  # no header
    return {c[0]: c[1] for c in cells}


def test_front_matter_reads_back_with_huggingface_hub():
    text = render()
    data = ModelCard(text).data
    assert data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert data.datasets == ["LMMs-Lab-Turtle/Vision-SR1-47K"]
    assert (data.license, data.pipeline_tag, data.library_name) == ("apache-2.0", "image-text-to-text", "transformers")
    assert "vigos" in data.tags and data.model_name == "ViGOS-7B"
    results = data.eval_results
    assert len(results) == 2 * 8 + 2 * 2  # Pass@5 + Avg@5 per main benchmark, Score + Prior per ViLP setting
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in results}
    assert got[("MM-Vet", "Pass@5")] == 72.02 and got[("MM-Vet", "Avg@5")] == 54.40
    assert got[("CV-Bench", "Pass@5")] == 91.09 and got[("ViLP-P", "Prior")] == 91.67
    assert got[("ViLP-F", "Score")] == 62.67
    assert {r.task_type for r in results} == {"image-text-to-text"}
    cv = next(r for r in results if r.dataset_name == "CV-Bench")
    assert cv.dataset_type == "nyu-visionx/CV-Bench" and cv.metric_type == "pass_at_5"
    # the raw model-index goes through the Hub's own converter too
    name, again = model_index_to_eval_results(data.to_dict()["model-index"])
    assert name == "ViGOS-7B" and len(again) == 20


def test_body_follows_the_seed_card():
    text = render()
    assert text.split("---\n", 2)[2].lstrip().startswith("# ViGOS-7B: Visual Grounding On-Policy Self-Distillation")
    positions = [text.index(f"## {s}\n") for s in SEED_SECTIONS]
    assert positions == sorted(positions)
    details = table(text, "Model Details")
    assert details["Base model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert details["Training method"] == "Segment-wise multimodal on-policy self-distillation"
    assert details["Weight format"] == "Merged full weights"
    assert details["Training data"] == "LMMs-Lab-Turtle/Vision-SR1-47K"
    assert details["Output format"] == r"`<description>...</description><think>...</think>\boxed{...}`"
    assert details["License"] == "Apache license 2.0" and details["Repository ID"] == "OedoSoldier/ViGOS-7B"
    assert list(table(text, "Training Details").items()) == SEED_HYPERPARAMETERS
    assert list(table(text, "Evaluation Protocol").items()) == SEED_DECODING
    results = table(text, "Evaluation Results")
    assert results["MM-Vet"] == "72.02 / 54.40" and results["Mean across 8 benchmarks"] == "75.60 / 50.99"
    assert "| ViLP-F | 62.67 / 97.00 |" in text and "| ViLP-P | 61.67 / 91.67 |" in text
    assert "@misc{wang2026seeing," in text and "eprint={2606.19120}" in text
    assert "trained for one epoch on LMMs-Lab-Turtle/Vision-SR1-47K using 8 × A100" in text


@pytest.mark.parametrize("student_prompt", ["release", "model-card"])
def test_usage_snippet_is_runnable_python_with_the_training_prompt(student_prompt):
    text = render(load_config(overrides=[f"prompt.student={student_prompt}"]), repo_id="someone/ViGOS-7B-repro")
    code = text.split("```python\n", 1)[1].split("\n```", 1)[0]
    tree = ast.parse(code)  # valid Python
    assert 'MODEL_ID = "someone/ViGOS-7B-repro"' in code
    assert "max_new_tokens=4096," in code and "temperature=1.0," in code and "top_p=0.90," in code
    assert "top_k=20," in code
    prompt_node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "prompt")
    question = "How many {red} blocks are there?"
    rendered = eval(compile(ast.Expression(prompt_node.value), "<card>", "eval"), {"question": question})
    # the snippet prompts with the text the published model was trained and evaluated with
    assert rendered == format_student_prompt(question, student_prompt)


@pytest.mark.parametrize(
    ("override", "row", "value"),
    [
        ("train.learning_rate=1e-5", "Learning rate", "1e-5"),
        ("lora.r=16", "LoRA rank", "16"),
        ("train.global_batch_size=64", "Effective batch size", "64"),
        ("train.max_steps=300", "Training steps", "300"),
        ("train.rollout_top_k=50", "Rollout top-p / top-k", "0.95 / 50"),
        ("train.kl_token_clip=0.1", "KL clipping", "0.1"),
        ("train.zero_stage=3", "Distributed training", "ZeRO-3"),
        ("train.lambda_reference=1.5", "λ_ref", "1.5"),
        ("train.lr_scheduler_type=cosine_with_restarts", "LR scheduler", "Cosine with restarts"),
    ],
)
def test_hyperparameters_are_the_config_passed(override, row, value):
    rows = table(render(load_config(overrides=[override])), "Training Details")
    assert rows[row] == value
    assert rows != dict(SEED_HYPERPARAMETERS)


def test_opsd_card_shows_its_one_teacher_weight():
    rows = table(render(load_config(overrides=["train.method=opsd"])), "Training Details")
    assert rows["Teacher weight (OPSD, one privileged teacher)"] == "1"
    assert "λ_ref" not in rows and "λ_perc" not in rows


def test_tiny_cpu_run_and_hardware():
    rows = table(render(load_config("tiny"), num_gpus=0, gpu_type="A100"), "Training Details")
    assert rows["Training steps"] == "4" and "Training epochs" not in rows
    assert (rows["GPUs"], rows["Optimizer"], rows["Precision"]) == ("CPU", "AdamW", "fp32")
    assert rows["Effective batch size"] == "2" and rows["LoRA rank"] == "8"
    # the recorded global batch, whatever the GPU count (the trainer derives the accumulation from it)
    assert table(render(num_gpus=2, gpu_type="H100"), "Training Details")["Effective batch size"] == "32"


def test_effective_batch_of_an_explicit_accumulation_config():
    cfg = load_config(overrides=["train.gradient_accumulation_steps=4"])  # 1 x 4 x 8 = 32, checked by the trainer
    assert table(render(cfg), "Training Details")["Effective batch size"] == "32"
    # a config recorded before `global_batch_size` existed: per-device x accumulation x GPUs
    old = cfg.to_dict()
    del old["train"]["global_batch_size"]
    old["train"]["gradient_accumulation_steps"] = 8
    assert table(render(train_config=old), "Training Details")["Effective batch size"] == "64"


def test_baseline_column_missing_values_and_subset_note():
    scores = card_scores()
    scores["benchmarks"]["mmsi"]["pass_at_k"] = None  # nothing evaluated there
    text = render(scores=scores, baseline=card_scores(shift=10), eval_settings={"max_examples": 8})
    assert "| Benchmark | ViGOS-7B | Qwen2.5-VL-7B-Instruct (base) |" in text
    assert "| MM-Vet | 72.02 / 54.40 | 62.02 / 44.40 |" in text
    assert "| MMSI | - | 51.10 / 15.58 |" in text
    assert "| ViLP-F | 62.67 / 97.00 | 52.67 / 87.00 |" in text
    assert "at most 8 examples per benchmark" in text
    results = ModelCard(text).data.eval_results
    assert len(results) == 19  # no model-index entry for a metric that was not measured
    assert not any(r.dataset_name == "MMSI" and r.metric_name == "Pass@5" for r in results)


def test_empty_scores_still_render_and_parse():
    text = render(scores={"benchmarks": {}, "mean": {"pass_at_k": None, "avg_at_k": None}, "vilp": {}})
    assert ModelCard(text).data.eval_results is None
    assert "## Evaluation Results" in text and "Prior-Sensitive ViLP" not in text
    assert not re.search(r"\bNone\b", text.split("---\n", 2)[2])


def test_the_card_says_which_grader_decided_each_benchmark():
    scores = card_scores()
    for name, row in scores["benchmarks"].items():
        row["grader"] = "rules (approximate)" if name == "mm-vet" else "rules"
    text = render(scores=scores)
    assert "Answers were graded by rules (approximate) (mm-vet); rules (mmmu, mmmu-pro," in text
    scores["benchmarks"]["mm-vet"]["grader"] = "rules"
    assert "Answers were graded by rules." in render(scores=scores)


def test_subset_note_follows_the_evaluation_not_the_config():
    # the training config's eval section says 8, but the evaluation recorded no cap: no note
    assert "examples per benchmark were evaluated" not in render(load_config(overrides=["eval.max_examples=8"]))
    assert "examples per benchmark were evaluated" not in render(eval_settings={"max_examples": None})
    # a cap above every benchmark's size cut nothing (card_scores: 100 per main benchmark, 900 per ViLP setting)
    assert "examples per benchmark were evaluated" not in render(eval_settings={"max_examples": 1000})
    assert "at most 100 examples per benchmark" in render(eval_settings={"max_examples": 100})
    # the questions behind each number are stated either way
    assert "Questions scored per benchmark: MM-Vet 100, MMMU 100," in render()
    assert "ViLP-F 900, ViLP-P 900." in render()


def test_decoding_table_and_snippet_follow_the_recorded_evaluation():
    settings = {"sampling": {"temperature": 0.7, "top_p": 0.8, "top_k": 50, "max_new_tokens": 1024}, "seed": 7}
    text = render(eval_settings=settings)
    rows = table(text, "Evaluation Protocol")
    assert (rows["Temperature"], rows["Top-p"], rows["Top-k"]) == ("0.7", "0.80", "50")
    assert (rows["Maximum generated tokens"], rows["Random seed"]) == ("1,024", "7")
    code = text.split("```python\n", 1)[1].split("\n```", 1)[0]
    assert "max_new_tokens=1024," in code and "temperature=0.7," in code and "top_k=50," in code
    scores = card_scores()
    for row in scores["benchmarks"].values():
        row["k"] = 3
    assert table(render(scores=scores), "Evaluation Protocol")["Number of samples per main benchmark question"] == "3"


def test_explicit_dataset_name():
    text = render(dataset="org/named-data")
    assert ModelCard(text).data.datasets == ["org/named-data"]
    assert table(text, "Model Details")["Training data"] == "org/named-data"


def test_training_data_is_the_training_configs():
    cfg = load_config(overrides=["data.source=org/other-data", "data.max_samples=500", "data.split=validation"])
    text = render(train_config=cfg.to_dict())
    assert ModelCard(text).data.datasets == ["org/other-data"]
    assert table(text, "Model Details")["Training data"] == "org/other-data (split validation, max_samples 500)"
    assert "on org/other-data (split validation, max_samples 500) using 8 × A100" in text


def test_local_base_model_and_data_never_leak_a_path(tmp_path):
    base = tmp_path / "models" / "tiny-model"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "qwen2_5_vl"}')  # transformers 5 records no _name_or_path
    cfg = load_config(overrides=[f"data.source={tmp_path / 'data' / 'synthetic-48-0'}"])
    text = render(base_model=str(base), train_config=cfg.to_dict(), baseline=card_scores(shift=1))
    assert str(tmp_path) not in text and "/models/" not in text
    data = ModelCard(text).data
    assert data.base_model is None and data.datasets is None and len(data.eval_results) == 20
    assert "base_model" not in text.split("---\n", 2)[1] and "datasets" not in text.split("---\n", 2)[1]
    details = table(text, "Model Details")
    assert details["Base model"] == "tiny-model (local, no Hub id)"
    assert details["Training data"] == "synthetic-48-0 (local, no Hub id)"
    assert ("The base model `tiny-model` was read from a local path that records no Hugging Face Hub id, so the "
            "metadata above names no `base_model`.") in text
    assert "so the metadata above names no `datasets`." in text
    assert "| Benchmark | ViGOS-7B | tiny-model (base) |" in text
    # a path that is not on this machine is local too
    assert ModelCard(render(base_model="/mnt/models/qwen")).data.base_model is None


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"), ("/home/me/qwen", None), ("", None)],
)
def test_local_base_model_named_by_the_id_its_folder_records(tmp_path, recorded, expected):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": recorded, "model_type": "qwen2_5_vl"}))
    text = render(base_model=str(folder))
    assert ModelCard(text).data.base_model == expected and str(tmp_path) not in text


def test_hub_cache_snapshot_names_its_repo(tmp_path):
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    text = render(base_model=str(snapshot))
    assert ModelCard(text).data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct" and str(tmp_path) not in text
    assert table(text, "Model Details")["Base model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
