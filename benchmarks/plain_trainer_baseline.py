"""The plain `Trainer` + vanilla `BertForSequenceClassification` on exactly the data and recipe of a pipeline's
teacher stage, to check that FlexBert's teacher is ordinary fine-tuning (the issue's bar: within 0.5 points).

    python benchmarks/plain_trainer_baseline.py --teacher runs/grafting/mrpc/seed42/graft/teacher \
        --task_name mrpc --seed 42 --num_train_epochs 3 --learning_rate 5e-5 --per_device_train_batch_size 32

The training split is cut exactly as `examples/run_glue_flex.py` cuts it (same seed, same held-out size), so both
runs see the same examples in the same order. Writes benchmarks/results/plain_trainer_<task>_seed<seed>.json.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from transformers_flex.data import GLUE_DEV_SPLIT, glue_num_labels, load_glue, split_train_heldout, tokenize_glue  # noqa: E402
from transformers_flex.metrics import GLUE_METRICS, glue_compute_metrics  # noqa: E402
from transformers_flex.utils import default_backbone_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="A pipeline's teacher stage directory (stage_results.json).")
    parser.add_argument("--task_name", default="mrpc")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_train_samples", type=int, default=None, help="The pipeline's training subset size.")
    parser.add_argument("--importance_samples", type=int, default=512)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    args = parser.parse_args()

    set_seed(args.seed)
    backbone = default_backbone_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    raw = load_glue(args.task_name)
    train, _ = split_train_heldout(raw["train"], args.max_train_samples, args.importance_samples, args.seed)
    train = tokenize_glue(train, tokenizer, args.task_name, args.max_seq_length)
    dev = tokenize_glue(raw[GLUE_DEV_SPLIT[args.task_name]], tokenizer, args.task_name, args.max_seq_length)
    model = BertForSequenceClassification.from_pretrained(backbone, num_labels=glue_num_labels(args.task_name))
    training_args = TrainingArguments(
        output_dir=str(Path("runs") / f"plain_{args.task_name}_seed{args.seed}"),
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        seed=args.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_compute_metrics(args.task_name),
    )
    trainer.train()
    plain = trainer.evaluate()
    teacher = json.loads((Path(args.teacher) / "stage_results.json").read_text())["metrics"]
    names = [
        key for key in ("eval_loss", *(f"eval_{name}" for name in GLUE_METRICS[args.task_name])) if key in teacher
    ]
    report = {
        "command": "python benchmarks/plain_trainer_baseline.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "plain_trainer": {key: plain[key] for key in names},
        "flexbert_teacher": {key: teacher[key] for key in names},
        "difference_points": {key: 100 * (teacher[key] - plain[key]) for key in names if key != "eval_loss"},
    }
    output = RESULTS / f"plain_trainer_{args.task_name}_seed{args.seed}.json"
    output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
