#!/usr/bin/env bash
# The SQuAD v1.1 run of docs/RESULTS.md §7 on a fixed subset of 3,000 training questions (windows of 384 tokens,
# stride 128), evaluated during the run on 500 dev questions: the pipeline's teacher -> rewire -> width (grafting,
# 2 epochs each), then width_depth as a single stage of 1 epoch (taught by the width model at full width), then span
# off-ramps and width gates on that model (into $OUTPUT_DIR/dynamic), which is what fits 2-core CPU sessions.
# Attention dropout is off: on CPU, PyTorch's attention with dropout runs about twice as slowly (the plain-Trainer
# baseline uses the same setting). Resumable: rerun the same command after an interruption. Usage: benchmarks/train_squad.sh [output_dir]
# Every checkpoint lands in the one run $OUTPUT_DIR (its record gives the benchmarks the data and windows), so the
# benchmarks take `--run $OUTPUT_DIR --stage width|width_depth_1ep|dynamic/gates`; the teacher is its teacher stage.
set -euo pipefail
OUTPUT_DIR=${1:-runs/squad}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python examples/run_squad_flex.py --output_dir "$OUTPUT_DIR" \
    --max_train_samples 3000 --max_eval_samples 500 --max_seq_length 384 --doc_stride 128 \
    --num_train_epochs 2 --learning_rate 1e-4 --per_device_train_batch_size 32 --per_device_eval_batch_size 64 \
    --grafting --subnet_sampling sandwich --num_random_subnets 2 --depth_rule prefix \
    --config_overrides attention_probs_dropout_prob=0.0 \
    --save_strategy epoch --save_total_limit 1 --logging_steps 20 --seed 42 --use_cpu --report_to none \
    --last_stage width
python examples/run_squad_flex.py --flex_stage width_depth --model_name_or_path "$OUTPUT_DIR/width" \
    --output_dir "$OUTPUT_DIR/width_depth_1ep" \
    --max_train_samples 3000 --max_eval_samples 500 --max_seq_length 384 --doc_stride 128 \
    --num_train_epochs 1 --learning_rate 1e-4 --per_device_train_batch_size 32 --per_device_eval_batch_size 64 \
    --subnet_sampling sandwich --num_random_subnets 2 \
    --save_strategy epoch --save_total_limit 1 --logging_steps 20 --seed 42 --use_cpu --report_to none
# Dynamic inference on top of the width_depth model: span off-ramps after layers 1-5 trained DeeBERT-style (only the
# ramps learn, at every width; 1 epoch), then width gates (one per 2 layers, everything else frozen; 1 epoch).
python examples/run_squad_flex.py --stages ramps gates --model_name_or_path "$OUTPUT_DIR/width_depth_1ep" \
    --output_dir "$OUTPUT_DIR/dynamic" \
    --max_train_samples 3000 --max_eval_samples 500 --max_seq_length 384 --doc_stride 128 \
    --per_device_train_batch_size 32 --per_device_eval_batch_size 64 \
    --exit_layers 1 2 3 4 5 --ramp_training two_stage --ramp_widths all \
    --ramps_num_train_epochs 1 --ramps_learning_rate 1e-3 \
    --gate_block_size 2 --gates_num_train_epochs 1 --gates_learning_rate 2e-4 \
    --save_strategy epoch --save_total_limit 1 --logging_steps 20 --seed 42 --use_cpu --report_to none
