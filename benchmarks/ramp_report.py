"""Dev metric of every off-ramp and of the final head of a model, and how much their outputs vary across the dev set
(a ramp whose output barely varies answers every input alike — and agrees with itself, which fools patience).

    python benchmarks/ramp_report.py --task stsb --model runs/dynamic/stsb/gates \
        --output benchmarks/results/ramp_report_stsb.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.data import GLUE_DEV_SPLIT, load_glue, tokenize_glue  # noqa: E402
from transformers_flex.evaluation import length_bucketed_batches  # noqa: E402
from transformers_flex.metrics import glue_metrics  # noqa: E402


@torch.no_grad()
def ramp_outputs(model, batches: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`{name: logits}` of every ramp ("ramp after layer k") and of the final head, at the active sub-network."""
    outputs: dict[str, list[torch.Tensor]] = {}
    labels = []
    for batch in batches:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        forward = model(**inputs, output_hidden_states=True)
        ramps = model.ramp_logits(forward.hidden_states, inputs["attention_mask"])
        answers = {f"ramp after layer {layer}": logits for layer, logits in sorted(ramps.items())}
        answers["final head"] = forward.logits
        for name, logits in answers.items():
            outputs.setdefault(name, []).append(logits)
        labels.append(batch["labels"])
    return {name: torch.cat(parts) for name, parts in outputs.items()}, torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True, help="A model with off-ramps.")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dev = tokenize_glue(load_glue(args.task, args.data_dir)[GLUE_DEV_SPLIT[args.task]], tokenizer, args.task)
    batches = length_bucketed_batches(dev, DataCollatorWithPadding(tokenizer), 64)
    model = FlexBertForSequenceClassification.from_pretrained(args.model, dynamic_inference=False).eval()
    outputs, labels = ramp_outputs(model, batches)
    rows = []
    for name, logits in outputs.items():
        metrics = glue_metrics(args.task, logits.numpy(), labels.numpy())
        # Spread of the answer across dev inputs: std of each output unit, averaged over units.
        rows.append({"classifier": name, **metrics, "output_std": float(logits.std(dim=0).mean())})
    report = {
        "command": "python benchmarks/ramp_report.py " + " ".join(sys.argv[1:]),
        "task": args.task,
        "label_std": float(labels.float().std()),
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
