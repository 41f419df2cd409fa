"""Evaluating and timing the static sub-networks of a FlexBert model."""

import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping

import torch
from tqdm.auto import tqdm

from .flops import paper_flops, subnet_flops
from .metrics import accuracy
from .modeling_flexbert import FlexBertPreTrainedModel

Batch = Mapping[str, torch.Tensor]


def subnet_grid(config, full_depth_only: bool = False) -> list[tuple[float, float]]:
    """Every (width, depth) pair of the config, depth descending then width descending (DynaBERT's order)."""
    widths = sorted(config.width_mults, reverse=True)
    depths = [1.0] if full_depth_only else sorted(config.depth_mults, reverse=True)
    return [(width, depth) for depth in depths for width in widths]


@torch.inference_mode()
def predict(model: FlexBertPreTrainedModel, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Logits, labels and real (unpadded) lengths of every example, for the active sub-network."""
    logits, labels, lengths = [], [], []
    for batch in batches:
        inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}
        logits.append(model(**inputs).logits.float().cpu())
        labels.append(batch["labels"])
        lengths.extend(batch["attention_mask"].sum(dim=1).tolist())
    return torch.cat(logits), torch.cat(labels), lengths


def evaluate_subnets(
    model: FlexBertPreTrainedModel,
    batches: Iterable[Batch],
    subnets: list[tuple[float, float]],
    show_progress: bool = True,
) -> list[dict]:
    """Dev accuracy and FLOPs of each (width, depth) sub-network of a sequence classifier.

    `mean_flops` averages per-example FLOPs at each example's real length; `paper_flops` is the papers' figure
    (linear layers only, padded length 128).
    """
    rows = []
    was_training = model.training
    model.eval()
    for width, depth in tqdm(subnets, desc="evaluate subnets", disable=not show_progress):
        with model.subnet(width=width, depth=depth):
            logits, labels, lengths = predict(model, batches)
        flops_of_length = {length: subnet_flops(model.config, width, depth, length) for length in set(lengths)}
        rows.append(
            {
                "width": width,
                "depth": depth,
                "accuracy": accuracy(logits.argmax(dim=-1).numpy(), labels.numpy()),
                "mean_flops": statistics.fmean(flops_of_length[length] for length in lengths),
                "paper_flops": paper_flops(model.config, width, depth),
            }
        )
    model.train(was_training)
    return rows


def length_bucketed_batches(dataset, collate: Callable[[list], Batch], batch_size: int) -> list[Batch]:
    """The dataset's examples sorted by length and cut into batches, so each batch pads little (length bucketing)."""
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    return [
        collate([dataset[i] for i in order[start : start + batch_size]]) for start in range(0, len(order), batch_size)
    ]


@torch.no_grad()
def dynamic_predict(model, batches: Iterable[Batch], **engine) -> dict[str, torch.Tensor]:
    """Logits, labels, exit layers, layer widths and FLOPs of every example under `model.dynamic_forward(**engine)`
    (engine settings: `criterion`, `threshold`, `use_gates`)."""
    parts: dict[str, list[torch.Tensor]] = {
        "logits": [],
        "labels": [],
        "exit_layers": [],
        "layer_widths": [],
        "flops": [],
    }
    for batch in batches:
        inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}
        output = model.dynamic_forward(**inputs, **engine)
        for key in parts:
            parts[key].append(batch["labels"] if key == "labels" else output[key].cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def interleaved_medians(
    runners: Mapping[Hashable, Callable[[], object]], rounds: int, warmup: int = 1, show_progress: bool = False
) -> dict:
    """Median wall-clock seconds of each runner; every round runs all of them, so noise hits them alike."""
    times: dict[Hashable, list[float]] = {key: [] for key in runners}
    for round_index in tqdm(range(warmup + rounds), desc="timing rounds", disable=not show_progress):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            if round_index >= warmup:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


@torch.inference_mode()
def subnet_latencies(
    model: FlexBertPreTrainedModel, batch: Batch, subnets: list[tuple[float, float]], rounds: int = 5
) -> dict[tuple[float, float], float]:
    """Median seconds of one forward pass of `batch` through each sub-network (sliced from the supernet)."""
    inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}

    def runner(width: float, depth: float) -> Callable[[], object]:
        def run() -> object:
            return model(**inputs, width=width, depth=depth)  # the sub-network travels with the call

        return run

    return interleaved_medians({subnet: runner(*subnet) for subnet in subnets}, rounds=rounds)


__all__ = [
    "dynamic_predict",
    "evaluate_subnets",
    "interleaved_medians",
    "length_bucketed_batches",
    "predict",
    "subnet_grid",
    "subnet_latencies",
]
