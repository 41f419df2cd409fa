#!/usr/bin/env bash
# Train a width- and depth-dynamic model for one GLUE task (ALGORITHMS.md §5-7): teacher -> rewire -> width
# (distillation into every width), then FastBERT-style attention off-ramps after layers 1-5 (DeeBERT two-stage: only
# the ramps learn, at every width), then width gates (one per 2 layers, everything else frozen). Resumable: finished
# stages are skipped. Attention ramps, not BERT-style [CLS] ramps: with the backbone frozen, MiniLM's [CLS] state in
# layers 1-3 is nearly the same for every input, and [CLS] ramps there learn nothing (docs/RESULTS.md §5).
#
#   bash benchmarks/train_dynamic.sh sst2 runs/dynamic/sst2 --max_train_samples 8000
#
# Extra arguments go to every stage (e.g. a training subset on CPU).
set -euo pipefail
task=$1 out=$2
shift 2
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python=${PYTHON:-.venv/bin/python}
common=(--task_name "$task" --per_device_train_batch_size 32 --max_seq_length 128 --save_strategy epoch
        --save_total_limit 1 --logging_steps 50 --disable_tqdm true --report_to none --seed 42 "$@")

"$python" examples/run_glue_flex.py "${common[@]}" --output_dir "$out" --flex_stage all --last_stage width \
    --num_train_epochs 2 --learning_rate 5e-5
if [ ! -f "$out/ramps/stage_results.json" ]; then
    "$python" examples/run_glue_flex.py "${common[@]}" --output_dir "$out/ramps" --flex_stage ramps \
        --model_name_or_path "$out/width" --exit_layers 1 2 3 4 5 --ramp_type attention --ramp_training two_stage \
        --ramp_widths all --num_train_epochs 1 --learning_rate 1e-3
fi
if [ ! -f "$out/gates/stage_results.json" ]; then
    "$python" examples/run_glue_flex.py "${common[@]}" --output_dir "$out/gates" --flex_stage gates \
        --model_name_or_path "$out/ramps" --gate_block_size 2 --num_train_epochs 2 --learning_rate 2e-4
fi
