#!/usr/bin/env bash
# The SQuAD v1.1 run of docs/RESULTS.md §7: teacher -> rewire -> width (grafting) -> width_depth on a fixed subset
# of 3,000 training questions (windows of 384 tokens, stride 128), evaluated during the run on 500 dev questions.
# Attention dropout is off: on CPU, PyTorch's attention with dropout runs about twice as slowly (the plain-Trainer
# baseline uses the same setting). Resumable: rerun the same command after an interruption. Usage: benchmarks/train_squad.sh [output_dir]
set -euo pipefail
OUTPUT_DIR=${1:-runs/squad}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python examples/run_squad_flex.py --output_dir "$OUTPUT_DIR" \
    --max_train_samples 3000 --max_eval_samples 500 --max_seq_length 384 --doc_stride 128 \
    --num_train_epochs 2 --learning_rate 1e-4 --per_device_train_batch_size 32 --per_device_eval_batch_size 64 \
    --grafting --subnet_sampling sandwich --num_random_subnets 2 --depth_rule prefix \
    --config_overrides attention_probs_dropout_prob=0.0 \
    --save_strategy epoch --save_total_limit 1 --logging_steps 20 --seed 42 --use_cpu --report_to none
