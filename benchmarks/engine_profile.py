"""Where the batched dynamic engine's time goes (issue #4): per component, and how efficiently its layers run.

Every variant runs `dynamic_forward` over a run's length-bucketed dev set; forward hooks time the embeddings, the
encoder layers, the off-ramps, the width gates and the final head, and "bookkeeping" is the rest (masks, FLOPs
counting, the gates' mean pooling, exit criteria, compaction, sorting rows by width). Variants: the static model
at every training width, ramps only, gates only, gates + ramps. Rounds interleave the variants; the report gives
medians. Writes JSON (with versions and machine) and prints a Markdown table.

The layers' efficiency: each static width gives seconds per layer FLOP on full batches; a dynamic variant's layer
time is compared with what its rows' layer FLOPs would cost at the full width's efficiency (what a FLOPs-ideal
speed-up assumes) and at the static efficiency of the widths they ran at. The ratio of measured to the latter
("layer overhead") is what running rows in smaller (per-width, after-exit) groups costs.

    python benchmarks/engine_profile.py --run runs/dynamic/sst2 --threshold 0.347 --rounds 7 \
        --output benchmarks/results/engine_profile_sst2_cpu.json

The run's own data (any `transformers-flex train` run of a classification task), dev set as the run split it; the
model is the run's final stage (`--stage` picks another: it needs off-ramps and width gates).
"""

import argparse
import statistics
import time
from collections import defaultdict

import torch
from common import add_run_arguments, parse_or_show, run_record, run_splits, write_report
from dynamic_throughput import without_labels
from tqdm.auto import tqdm

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.modeling_flexbert import layer_macs, width_shape
from transformers_flex.utils import load_tokenizer


class ComponentTimer:
    """Wall-clock seconds spent inside groups of modules, via forward pre/post hooks (CPU: ops are synchronous)."""

    def __init__(self, model: FlexBertForSequenceClassification):
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[int, float] = {}
        groups = {
            "embeddings": [model.bert.embeddings],
            "layers": list(model.bert.encoder.layer),
            "ramps": list(model.off_ramps.values()),
            "gates": list(model.width_gates.values()),
            "head": [model.bert.pooler, model.classifier],
        }
        for name, modules in groups.items():
            for module in modules:
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(lambda module, args, output, name=name: self._stop(module, name))

    def _start(self, module, args) -> None:
        self._started[id(module)] = time.perf_counter()

    def _stop(self, module, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._started.pop(id(module))

    def measure(self, run) -> tuple[dict[str, float], list]:
        """Run once; returns seconds per component (plus `total` and `bookkeeping`) and the outputs."""
        self.seconds.clear()
        start = time.perf_counter()
        outputs = run()
        total = time.perf_counter() - start
        parts = dict(self.seconds)
        return {**parts, "total": total, "bookkeeping": total - sum(parts.values())}, outputs


def layer_flops_by_width(config, outputs: list, lengths: torch.Tensor) -> dict[float, float]:
    """FLOPs of the encoder layers each row ran, split by the width it ran them at (from `layer_widths`)."""
    widths = torch.cat([output.layer_widths for output in outputs]).double()
    flops = {}
    for width in widths.unique().tolist():
        if width == 0:  # layers a row never ran (it had exited)
            continue
        heads, neurons = width_shape(config.num_attention_heads, config.intermediate_size, width)
        per_row = 2 * layer_macs(config.hidden_size, config.head_size, heads, neurons, lengths.double())
        flops[width] = float((per_row[:, None] * (widths == width)).sum())
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one; it needs off-ramps and width gates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.2, help="Entropy threshold of the ramps.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = data.checkpoint(args.stage)
    batches = without_labels(data.batches("dev", load_tokenizer(checkpoint), args.batch_size))
    lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches])
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint).eval()
    if not (len(model.width_gates) and len(model.off_ramps)):
        raise SystemExit(f"{checkpoint} needs both off-ramps and width gates (pick a stage that has them: --stage).")
    timer = ComponentTimer(model)

    def engine(width: float = 1.0, **settings):
        def run() -> list:
            with torch.no_grad(), model.subnet(width=width):
                return [model.dynamic_forward(**batch, threshold=args.threshold, **settings) for batch in batches]

        return run

    widths = [float(width) for width in model.config.width_mults]
    variants = {f"static w{width}": engine(width, use_gates=False, use_ramps=False) for width in widths}
    variants["ramps"] = engine(use_gates=False)
    variants["gates"] = engine(use_ramps=False)
    variants["gates + ramps"] = engine()
    samples: dict[str, list[dict]] = defaultdict(list)
    outputs = {}
    for round_index in tqdm(range(args.rounds + 1), desc="rounds"):
        for name, run in variants.items():
            seconds, outputs[name] = timer.measure(run)
            if round_index:  # the first round warms up
                samples[name].append(seconds)

    # Seconds per layer FLOP at each width, on full batches (the static variants).
    static_rate = {}
    for width in widths:
        (flops,) = layer_flops_by_width(model.config, outputs[f"static w{width}"], lengths).values()
        static_rate[width] = statistics.median(s["layers"] for s in samples[f"static w{width}"]) / flops
    full_total = statistics.median(s["total"] for s in samples[f"static w{1.0}"])
    full_flops = float(torch.cat([out.flops for out in outputs[f"static w{1.0}"]]).sum())
    rows = []
    for name, runs in samples.items():
        medians = {part: statistics.median(run.get(part, 0.0) for run in runs) for part in runs[0]}
        by_width = layer_flops_by_width(model.config, outputs[name], lengths)
        at_static_rate = sum(flops * static_rate[width] for width, flops in by_width.items())
        at_full_width_rate = sum(by_width.values()) * static_rate[1.0]
        spent = float(torch.cat([out.flops for out in outputs[name]]).sum())
        # Ramps, gates and head: their FLOPs at the full-width layers' efficiency, as a FLOPs-ideal speed-up counts.
        rest_at_full_width_rate = (spent - sum(by_width.values())) * static_rate[1.0]
        rows.append(
            {
                "variant": name,
                "milliseconds": {part: 1000 * value for part, value in medians.items()},
                "layers_at_full_width_efficiency_ms": 1000 * at_full_width_rate,
                "layers_at_static_efficiency_ms": 1000 * at_static_rate,
                "ramps_gates_head_at_full_width_efficiency_ms": 1000 * rest_at_full_width_rate,
                "layer_overhead": medians["layers"] / at_static_rate,
                "flops_ideal_speedup": full_flops / spent,
                "measured_speedup": full_total / medians["total"],
            }
        )
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        threshold=args.threshold,
        dev_examples=len(lengths),
        batch_size=args.batch_size,
        rounds=args.rounds,
        rows=rows,
    )
    write_report(args.output, report)
    print(table(report))


def table(report: dict) -> str:
    """Milliseconds per component and the layers' efficiency, one row per variant."""
    parts = ["embeddings", "layers", "ramps", "gates", "head", "bookkeeping"]
    lines = [
        "| variant | total ms | " + " | ".join(parts) + " | layers at full-width efficiency | layers at static "
        "efficiency of their widths | layer overhead | ramps + gates + head at full-width efficiency | "
        "speed-up (ideal) |",
        "|---|" + "---|" * (len(parts) + 6),
    ]
    for row in report["rows"]:
        ms = row["milliseconds"]
        cells = [row["variant"], f"{ms['total']:.0f}", *(f"{ms.get(part, 0.0):.0f}" for part in parts)]
        cells += [f"{row['layers_at_full_width_efficiency_ms']:.0f}", f"{row['layers_at_static_efficiency_ms']:.0f}"]
        cells.append(f"{row['layer_overhead']:.2f}×")
        cells.append(f"{row['ramps_gates_head_at_full_width_efficiency_ms']:.0f}")
        cells.append(f"{row['measured_speedup']:.2f}× ({row['flops_ideal_speedup']:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
