"""Budget search: the best per-layer widths and depth of a flexible model under a cost budget.

A budget is a fraction of the full model's cost, by FLOPs (`flops`, the analytic cost model at the given length) or
by measured latency on this machine (`latency`: a lookup table of one layer's time at every width, at a batch size
and length, plus the embeddings' and head's time, so a candidate's latency is a sum, not a new timing).

The search (`search_operating_point`) is greedy, for every depth of the model: start at full width and narrow by
one step, again and again down to the narrowest widths, the layer whose narrowing loses the least held-out score per
unit of cost saved (the marginal-utility rule for knapsack-like problems whose cost is additive over layers, as
here); the answer is the best-scoring point of that path within the budget. Each step scores one candidate per
layer, so a 6-layer, 4-width model needs at most 6 x 18 evaluations per depth, against thousands for an evolutionary
search over the 4^6 width lists. Scores come from a held-out slice of the *training*
data (the pipeline's importance examples), never dev. The best uniform sub-network under the same budget is scored
the same way, for comparison.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from .evaluation import interleaved_medians
from .flops import subnet_flops
from .modeling_flexbert import FlexBertPreTrainedModel

OBJECTIVES = ("flops", "latency")
Score = Callable[[list[float], float], float]  # (per-layer widths, depth) -> held-out score, higher is better
Cost = Callable[[list[float], float], float]  # (per-layer widths, depth) -> cost as a fraction of the full model


@dataclass
class OperatingPoint:
    """A sub-network chosen for a budget: per-layer widths, depth, its cost fraction and held-out score."""

    width: list[float]
    depth: float
    cost: float
    score: float

    def as_config(self, objective: str, budget: float) -> dict:
        """The entry `config.operating_points[name]` stores."""
        return asdict(self) | {"objective": objective, "budget": budget}


def flops_cost(config, seq_length: int) -> Cost:
    """Cost as the FLOPs fraction of the full model at `seq_length` tokens."""
    full = subnet_flops(config, 1.0, 1.0, seq_length)
    return lambda width, depth: subnet_flops(config, width, depth, seq_length) / full


@torch.inference_mode()
def latency_cost(model: FlexBertPreTrainedModel, batch_size: int, seq_length: int, rounds: int = 7) -> Cost:
    """Cost as the measured latency fraction of the full model: one layer timed at every width (all layers have the
    same shape), plus the embeddings and the rest of the model (pooler, head), at `batch_size` x `seq_length`."""
    config = model.config
    encoder = model.base_model.encoder
    hidden = torch.randn(batch_size, seq_length, config.hidden_size)
    layer = encoder.layer[0]
    ids = torch.randint(config.vocab_size // 2, config.vocab_size, (batch_size, seq_length))  # no special tokens
    runners = {width: (lambda w=width: layer(hidden, None, w)) for width in config.width_mults}
    runners["whole"] = lambda: model(input_ids=ids, dynamic=False)  # a task head: the static model
    medians = interleaved_medians(runners, rounds=rounds, warmup=1)  # rounds interleave, so noise hits all alike
    per_width, whole = {width: medians[width] for width in config.width_mults}, medians["whole"]
    fixed = max(whole - config.num_hidden_layers * per_width[1.0], 0.0)  # embeddings, pooler and head

    def cost(width: list[float], depth: float) -> float:
        kept = encoder.kept_layers(encoder.make_subnet(width, depth))
        return (fixed + sum(per_width[width[index]] for index in kept)) / whole

    return cost


def greedy_widths(
    num_layers: int,
    widths: Sequence[float],
    depth: float,
    kept: Sequence[int],
    score: Score,
    cost: Cost,
    budget: float,
) -> OperatingPoint | None:
    """Narrow the kept layers one width step at a time, least score lost per cost saved first, down to the narrowest
    widths, and return the best-scoring point of that path that costs at most `budget`; None when even the narrowest
    kept layers cost more. The path goes on past the first point that fits: held-out scores are not monotone in width,
    and a point further on may score higher — and so one path serves every budget, and a larger budget never gets a
    lower-scoring point than a smaller one."""
    steps = sorted(widths, reverse=True)
    current = [steps[0]] * num_layers
    current_score, current_cost = score(current, depth), cost(current, depth)
    best_fit = OperatingPoint(current, depth, current_cost, current_score) if current_cost <= budget else None
    while True:
        best_step = None
        for layer in kept:
            position = steps.index(current[layer])
            if position + 1 == len(steps):
                continue  # already at the narrowest width
            candidate = [*current[:layer], steps[position + 1], *current[layer + 1 :]]
            candidate_score, candidate_cost = score(candidate, depth), cost(candidate, depth)
            saved = max(current_cost - candidate_cost, 1e-12)
            loss_per_cost = (current_score - candidate_score) / saved
            if best_step is None or loss_per_cost < best_step[0]:
                best_step = (loss_per_cost, candidate, candidate_score, candidate_cost)
        if best_step is None:
            return best_fit  # every kept layer is at the narrowest width: the path ends
        _, current, current_score, current_cost = best_step
        if current_cost <= budget and (best_fit is None or current_score > best_fit.score):
            best_fit = OperatingPoint(current, depth, current_cost, current_score)


def search_operating_point(
    model: FlexBertPreTrainedModel,
    score: Score,
    cost: Cost,
    budget: float,
    progress: Callable[[str], None] = print,
    cache: dict | None = None,
) -> tuple[OperatingPoint | None, OperatingPoint | None]:
    """The best operating point under `budget` (the best of every depth's greedy result and of the uniform
    sub-networks that fit), and the best uniform (one width for all layers) sub-network under it, both scored by
    `score`; None where nothing fits. `cache` keeps scores across calls with the same `score`: every budget walks
    the same greedy path, so searching several budgets costs about as much as one."""
    if not 0 < budget <= 1:
        raise ValueError(f"The budget is a fraction of the full model's cost in (0, 1], got {budget}.")
    config, encoder = model.config, model.base_model.encoder
    cache = {} if cache is None else cache

    def cached_score(width: list[float], depth: float) -> float:
        key = (tuple(width), depth)
        if key not in cache:
            cache[key] = score(width, depth)
        return cache[key]

    layers = config.num_hidden_layers
    searched, uniform = [], []
    for depth in sorted(config.depth_mults, reverse=True):
        kept = encoder.kept_layers(encoder.make_subnet(1.0, depth))
        point = greedy_widths(layers, config.width_mults, depth, kept, cached_score, cost, budget)
        if point is not None:
            searched.append(point)
            progress(f"depth {depth}: widths {point.width}, cost {point.cost:.3f}, held-out score {point.score:.4f}")
        for width in config.width_mults:
            widths = [width] * layers
            if cost(widths, depth) <= budget:
                uniform.append(OperatingPoint(widths, depth, cost(widths, depth), cached_score(widths, depth)))
    best_uniform = max(uniform, key=lambda point: point.score, default=None)
    # A greedy path can end below a uniform sub-network it passed by: the answer is the best of both.
    return max(searched + uniform, key=lambda point: point.score, default=None), best_uniform


def heldout_score(model: FlexBertPreTrainedModel, task, heldout, collate, batch_size: int = 64) -> Score:
    """The mean of the task's metrics (GLUE's convention where it reports two, e.g. accuracy and F1) of a static
    sub-network on the held-out training examples, batched by length."""
    from transformers import EvalPrediction

    from .evaluation import length_bucketed_batches

    batches = length_bucketed_batches(heldout, collate, batch_size)
    compute = task.compute_metrics()

    @torch.inference_mode()
    def score(width: list[float], depth: float) -> float:
        logits, labels = [], []
        for batch in batches:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            logits.append(model(**inputs, width=width, depth=depth, dynamic=False).logits.float())
            labels.append(batch["labels"])
        metrics = compute(EvalPrediction(torch.cat(logits).numpy(), torch.cat(labels).numpy()))
        return sum(metrics.values()) / len(metrics)

    return score


def search_run(
    run_dir,
    budget: float,
    objective: str = "flops",
    name: str | None = None,
    heldout_samples: int | None = 256,
    batch_size: int = 32,
    seq_length: int = 128,
    seed: int | None = None,
    cache: dict | None = None,
) -> dict:
    """Search a finished classification run's final checkpoint for the best operating point under `budget`, store it
    in that checkpoint's config as `operating_points[name]` (default `<objective><budget>`), and return the searched
    and the best uniform point with their held-out scores. `seed` draws the `heldout_samples` scoring examples at
    random from the held-out slice (a search seed); without it, the slice's first ones."""
    from transformers import DataCollatorWithPadding

    from .hub import read_run
    from .modeling_flexbert import FlexBertForSequenceClassification
    from .training_pipeline import load_task, recorded_data_arguments, select_splits
    from .utils import load_tokenizer

    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
    run = read_run(run_dir)
    if run.record.get("task", {}).get("kind") not in ("classification", "regression"):
        raise ValueError("Budget search scores sequence-classification runs; this run is not one.")
    model = FlexBertForSequenceClassification.from_pretrained(run.checkpoint).eval()
    tokenizer = load_tokenizer(run.checkpoint)
    data_args = recorded_data_arguments(run.record)
    task, raw = load_task(data_args)
    heldout = select_splits(task, raw, data_args, run.record["training"]["seed"])["heldout"]
    if seed is not None:
        heldout = heldout.shuffle(seed=seed)
    if heldout_samples is not None:
        heldout = heldout.select(range(min(heldout_samples, len(heldout))))
    features = task.tokenize(heldout, tokenizer, data_args.max_seq_length)
    score = heldout_score(model, task, features, DataCollatorWithPadding(tokenizer))
    if objective == "flops":
        cost = flops_cost(model.config, seq_length)
    else:
        cost = latency_cost(model, batch_size, seq_length)
    searched, uniform = search_operating_point(model, score, cost, budget, cache=cache)
    if searched is None:
        raise ValueError(f"No sub-network of this model costs at most {budget} of the full model ({objective}).")
    name = name or f"{objective}{budget}"
    model.config.operating_points = {
        **(model.config.operating_points or {}),
        name: searched.as_config(objective, budget),
    }
    model.config.save_pretrained(run.checkpoint)  # only config.json changes: the weights are untouched
    return {"name": name, "checkpoint": str(run.checkpoint), "searched": searched, "uniform": uniform}


__all__ = [
    "OBJECTIVES",
    "OperatingPoint",
    "flops_cost",
    "greedy_widths",
    "heldout_score",
    "latency_cost",
    "search_operating_point",
    "search_run",
]
