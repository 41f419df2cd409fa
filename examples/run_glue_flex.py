"""Train a flexible BERT on a GLUE task or your own data, one stage or the whole pipeline (like transformers'
run_glue.py). The pipeline itself is `transformers_flex.training_pipeline`; `transformers-flex train` takes the same
arguments and runs the whole pipeline by default.

    python examples/run_glue_flex.py --task_name mrpc --output_dir runs/mrpc --flex_stage all \
        --num_train_epochs 3 --learning_rate 2e-5 --per_device_train_batch_size 32 --grafting

Single stages train the model given by `--model_name_or_path`; the dynamic-inference stages add their modules to a
trained checkpoint, e.g. off-ramps copied from the final head, then width gates:

    python examples/run_glue_flex.py --task_name sst2 --flex_stage ramps --model_name_or_path runs/sst2/width \
        --exit_layers 1 2 3 4 5 --ramp_training two_stage --output_dir runs/sst2/ramps
    python examples/run_glue_flex.py --task_name sst2 --flex_stage gates --model_name_or_path runs/sst2/ramps \
        --gate_block_size 2 --learning_rate 2e-4 --output_dir runs/sst2/gates

`--flex_stage all` runs teacher (plain fine-tuning) -> rewire (importance on held-out training examples) -> width
(distillation into every width, optional grafting) -> width_depth (every width and depth), plus ramps and gates when
`--exit_layers` / `--gate_block_size` are given; `--stages` picks any of them in order, e.g.
`--stages teacher width ramps gates --ramps_learning_rate 1e-3`. Each stage writes `<output_dir>/<stage>/` (model,
tokenizer, metrics); the run writes `<output_dir>/results.json` and `<output_dir>/run_config.json`. A finished stage
is loaded, an unfinished one resumes from its last complete checkpoint, so an interrupted run restarts with the same
command; a rerun with other settings is refused (`--overwrite_output_dir` starts over). Own data:
`--train_file train.csv --validation_file dev.csv [--text_column_names a,b] [--label_column_name label]`, or
`--dataset_name <Hub id> [--dataset_config_name ...]`. For a GLUE task `--data_dir` (or the mirror found in
`../shared/data`) is used where present, else the Hub's `nyu-mll/glue`.
"""

from transformers_flex.training_pipeline import main

if __name__ == "__main__":
    main()
