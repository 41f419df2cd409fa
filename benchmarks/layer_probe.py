"""How much each layer's [CLS] state knows, and how good each off-ramp is (why the ramps are attention ramps).

For a model: per layer, the spread of the [CLS] state across examples (mean over dimensions of the standard
deviation), and the dev accuracy of a logistic-regression probe trained on it (a fixed subset of training
examples). For every `--ramps` checkpoint: each off-ramp's dev accuracy at each width, next to the final
classifier's. Writes JSON.

    python benchmarks/layer_probe.py --task sst2 --model runs/dynamic/sst2/width \
        --ramps runs/dynamic/sst2/ramps --output benchmarks/results/layer_probe_sst2.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.data import GLUE_DEV_SPLIT, load_glue, tokenize_glue  # noqa: E402


def batches(dataset, collate, size: int = 64):
    for start in range(0, len(dataset), size):
        yield collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])


@torch.no_grad()
def cls_states(model, dataset, collate) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[CLS] state of every layer (0: embeddings) for every example, and the labels."""
    states, labels = [], []
    for batch in batches(dataset, collate):
        labels.append(batch.pop("labels"))
        states.append([hidden[:, 0] for hidden in model(**batch, output_hidden_states=True).hidden_states])
    return [torch.cat(layer) for layer in zip(*states)], torch.cat(labels)


@torch.no_grad()
def ramp_accuracies(model, dataset, collate, width: float) -> dict[str, float]:
    correct, total = {}, 0
    with model.subnet(width=width):
        for batch in batches(dataset, collate):
            labels = batch.pop("labels")
            output = model(**batch, output_hidden_states=True)
            answers = model.ramp_logits(output.hidden_states, batch["attention_mask"])
            answers[model.config.num_hidden_layers] = output.logits
            for layer, logits in answers.items():
                correct[layer] = correct.get(layer, 0) + int((logits.argmax(-1) == labels).sum())
            total += len(labels)
    return {str(layer): correct[layer] / total for layer in sorted(correct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", required=True)
    parser.add_argument("--ramps", nargs="*", default=[], help="Checkpoints with off-ramps to score.")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    collate = DataCollatorWithPadding(tokenizer)
    raw = load_glue(args.task)
    train = raw["train"].shuffle(seed=1).select(range(args.train_examples))
    train, dev = (tokenize_glue(split, tokenizer, args.task) for split in (train, raw[GLUE_DEV_SPLIT[args.task]]))
    model = FlexBertForSequenceClassification.from_pretrained(args.model).eval()
    train_states, train_labels = cls_states(model, train, collate)
    dev_states, dev_labels = cls_states(model, dev, collate)
    layers = []
    for layer, (train_x, dev_x) in enumerate(zip(train_states, dev_states)):
        probe = LogisticRegression(max_iter=2000).fit(train_x.numpy(), train_labels.numpy())
        layers.append(
            {
                "layer": layer,
                "cls_spread": float(train_x.std(dim=0).mean()),
                "cls_norm": float(train_x.norm(dim=1).mean()),
                "probe_dev_accuracy": float(probe.score(dev_x.numpy(), dev_labels.numpy())),
            }
        )
        print(layers[-1])
    ramps = {}
    for path in args.ramps:
        ramp_model = FlexBertForSequenceClassification.from_pretrained(path).eval()
        ramps[path] = {
            "ramp_type": ramp_model.config.ramp_type,
            **{f"width_{width}": ramp_accuracies(ramp_model, dev, collate, width) for width in (1.0, 0.5)},
        }
        print(path, ramps[path])
    report = {
        "command": "python benchmarks/layer_probe.py " + " ".join(sys.argv[1:]),
        "task": args.task,
        "model": args.model,
        "layers": layers,
        "ramps": ramps,
    }
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
