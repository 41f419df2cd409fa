"""Train a flexible BERT for extractive question answering on SQuAD v1.1 or your own SQuAD-format data, one stage or
the whole pipeline (like transformers' run_qa.py, whose argument names it takes: `--max_seq_length`,
`--doc_stride`, `--max_train_samples`, `--max_eval_samples`, `--n_best_size`, `--max_answer_length`,
`--pad_to_max_length`, `--dataset_name`, `--train_file`, `--validation_file`).

    python examples/run_squad_flex.py --output_dir runs/squad --max_train_samples 4000 --num_train_epochs 2 \
        --per_device_train_batch_size 32 --learning_rate 1e-4 --grafting

Without data arguments the data is SQuAD v1.1: the local mirror `<data_dir>/squad` where it exists, else the Hub's
`rajpurkar/squad`. Own data: `--train_file train.jsonl --validation_file dev.jsonl` (JSON lines or parquet with the
columns `id`, `question`, `context`, `answers = {"text": [...], "answer_start": [...]}`), or `--dataset_name <Hub
id>`. Contexts longer than `--max_seq_length` (384) become windows that share `--doc_stride` (128) tokens; a
question's answer is its best span over all of its windows. Every stage is scored by the official SQuAD v1.1 exact
match and F1 and writes its dev answers as `<output_dir>/<stage>/predictions.json` (`{question id: answer}`, the file
any official evaluation script scores), with one file per sub-network under `<stage>/predictions/`.

It runs the whole pipeline by default (`--flex_stage <stage>` trains one stage). The stages and the run directory
behave as in `examples/run_glue_flex.py` and `transformers-flex train` (the same library,
`transformers_flex.training_pipeline`): teacher -> rewire -> width -> width_depth, resumable, recorded in
`run_config.json`, results in `results.json`.
"""

import sys

from transformers_flex.tasks import SQUAD_TASK
from transformers_flex.training_args import PIPELINE_STAGE
from transformers_flex.training_pipeline import main

DATA_FLAGS = ("--task_name", "--dataset_name", "--train_file", "--validation_file")

if __name__ == "__main__":
    argv = sys.argv[1:]
    given = {argument.split("=")[0] for argument in argv}
    if not given & set(DATA_FLAGS) and not (len(argv) == 1 and argv[0].endswith(".json")):
        argv = ["--task_name", SQUAD_TASK, *argv]  # SQuAD v1.1 by default
    main(argv, flex_stage=PIPELINE_STAGE)  # the whole pipeline unless --flex_stage picks one stage
