"""The plain `Trainer` + vanilla `BertForQuestionAnswering` on exactly the data and recipe of a SQuAD pipeline's
teacher stage, to check that FlexBert's QA teacher is ordinary fine-tuning.

    python benchmarks/plain_trainer_squad_baseline.py --teacher runs/squad/teacher --max_train_samples 3000 \
        --max_eval_samples 500 --num_train_epochs 2 --learning_rate 1e-4 --per_device_train_batch_size 32 \
        --config_overrides attention_probs_dropout_prob=0.0

The training questions are cut as the pipeline cuts them (same seed, same held-out size) and windowed by the same
functions, so both runs see the same windows in the same order; the dev questions are the pipeline's first
`--max_eval_samples`. Writes benchmarks/results/squad/plain_trainer_seed<seed>.json.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoTokenizer,
    BertForQuestionAnswering,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from transformers_flex.data import split_train_heldout  # noqa: E402
from transformers_flex.squad import SquadMetrics, load_squad  # noqa: E402
from transformers_flex.tasks import squad_task  # noqa: E402
from transformers_flex.utils import default_backbone_path  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "squad"
COMPARED = ("eval_loss", "eval_exact_match", "eval_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The pipeline's teacher stage directory.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--importance_samples", type=int, default=512)
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--num_train_epochs", type=float, default=2.0)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    parser.add_argument("--config_overrides", default=None, help="As the pipeline's (run_clm.py's format).")
    args = parser.parse_args()

    set_seed(args.seed)
    backbone = default_backbone_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    raw = load_squad()
    task = squad_task()
    task.doc_stride = args.doc_stride
    train, _ = split_train_heldout(raw["train"], args.max_train_samples, args.importance_samples, args.seed)
    dev_examples = raw["validation"]
    if args.max_eval_samples is not None:
        dev_examples = dev_examples.select(range(args.max_eval_samples))
    train_features = task.tokenize(train, tokenizer, args.max_seq_length)
    dev_features = task.tokenize(dev_examples, tokenizer, args.max_seq_length, training=False)
    config = AutoConfig.from_pretrained(backbone)
    if args.config_overrides:
        config.update_from_string(args.config_overrides)
    model = BertForQuestionAnswering.from_pretrained(backbone, config=config)
    training_args = TrainingArguments(
        output_dir=str(Path("runs") / f"plain_squad_seed{args.seed}"),
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=64,
        seed=args.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=20,
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_features,
        eval_dataset=dev_features,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=SquadMetrics(dev_examples, dev_features),
    )
    trainer.train()
    plain = trainer.evaluate()
    teacher = json.loads((Path(args.teacher) / "stage_results.json").read_text())["metrics"]
    report = {
        "command": "python benchmarks/plain_trainer_squad_baseline.py "
        + " ".join(f"--{key} {value}" for key, value in vars(args).items() if value is not None),
        "train_windows": len(train_features),
        "dev_questions": len(dev_examples),
        "plain_trainer": {key: plain[key] for key in COMPARED},
        "flexbert_teacher": {key: teacher[key] for key in COMPARED},
        "difference": {key: teacher[key] - plain[key] for key in COMPARED},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / f"plain_trainer_seed{args.seed}.json"
    output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
