#!/usr/bin/env bash
# Train a width- and depth-dynamic model for one GLUE task (docs/algorithms.md §5-7): teacher -> rewire -> width
# (distillation into every width), then FastBERT-style attention off-ramps after layers 1-5 (DeeBERT two-stage: only
# the ramps learn, at every width), then width gates (one per 2 layers, everything else frozen). Resumable: finished
# stages are skipped. Attention ramps, not BERT-style [CLS] ramps: with the backbone frozen, MiniLM's [CLS] state in
# layers 1-3 is nearly the same for every input, and [CLS] ramps there learn nothing (docs/RESULTS.md §5).
#
#   bash benchmarks/train_dynamic.sh sst2 runs/dynamic/sst2 --max_train_samples 8000
#
# One pipeline run (transformers_flex.training_pipeline); extra arguments go to it (e.g. a training subset on CPU).
# Layout: <out>/{teacher,rewire,width,ramps,gates}/ and <out>/results.json with every stage. Earlier versions ran the
# ramps and gates stages as separate commands into the same <out>/ramps and <out>/gates, and did not save the
# rewired teacher (<out>/rewire); runs made by them are taken as they are.
set -euo pipefail
task=$1 out=$2
shift 2
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python=${PYTHON:-.venv/bin/python}

"$python" -m transformers_flex.cli train --task_name "$task" --output_dir "$out" \
    --stages teacher width ramps gates --per_device_train_batch_size 32 --max_seq_length 128 --save_strategy epoch \
    --save_total_limit 1 --logging_steps 50 --disable_tqdm true --report_to none --seed 42 \
    --num_train_epochs 2 --learning_rate 5e-5 \
    --exit_layers 1 2 3 4 5 --ramp_type attention --ramp_training two_stage --ramp_widths all \
    --ramps_num_train_epochs 1 --ramps_learning_rate 1e-3 \
    --gate_block_size 2 --gates_num_train_epochs 2 --gates_learning_rate 2e-4 "$@"
