"""Budget search (transformers_flex.budget, `transformers-flex search`): the greedy search finds the optimum where
it is provably optimal (equal cost steps, additive losses: checked against brute force), respects the budget, scores
on held-out *training* examples, and stores named operating points that `set_subnet(budget=)`, `subnet(budget=)`,
calls and exports use; bad budgets and points get clear errors."""

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from transformers_flex import FlexBertConfig, FlexBertForSequenceClassification
from transformers_flex.budget import flops_cost, greedy_widths, latency_cost, search_operating_point
from transformers_flex.cli import main as cli_main
from transformers_flex.flops import subnet_flops

WIDTHS = (1.0, 0.75, 0.5, 0.25)


def test_greedy_equals_brute_force_when_losses_add_up():
    """Four layers, cost = mean width (each step saves the same), score loss additive and convex per layer."""
    importance = [3.0, 0.5, 2.0, 1.0]

    def score(width, depth):
        return -sum(weight * (1 - w) ** 2 for weight, w in zip(importance, width))

    def cost(width, depth):
        return sum(width) / len(width)

    for budget in (0.9, 0.6, 0.45, 0.3):
        point = greedy_widths(4, WIDTHS, 1.0, range(4), score, cost, budget)
        fitting = [list(w) for w in itertools.product(WIDTHS, repeat=4) if cost(w, 1.0) <= budget]
        best = max(fitting, key=lambda w: score(w, 1.0))
        assert point.cost <= budget and point.score == pytest.approx(score(best, 1.0))
        assert point.width[1] <= point.width[0]  # the least important layer narrows first
    assert greedy_widths(4, WIDTHS, 1.0, range(4), score, cost, 0.2) is None  # below the narrowest model


def test_a_larger_budget_never_gets_a_lower_scoring_point():
    """Held-out scores are not monotone in width (noise; a narrower layer can score higher): with random scores, the
    point for a budget is the best of the whole greedy path within it, so scores never fall as the budget grows, and
    the tightest budget that fits the narrowest model still finds the best-scoring fitting point of the path."""
    generator = random.Random(0)
    scores: dict[tuple, float] = {}

    def score(width, depth):
        return scores.setdefault(tuple(width), generator.random())

    def cost(width, depth):
        return sum(width) / len(width)

    budgets = [0.25, 0.4, 0.55, 0.7, 0.85, 1.0]
    points = [greedy_widths(4, WIDTHS, 1.0, range(4), score, cost, budget) for budget in budgets]
    for point, budget in zip(points, budgets):
        assert point.cost <= budget and point.score == scores[tuple(point.width)]
    assert all(looser.score >= tighter.score for tighter, looser in zip(points, points[1:]))
    # Budget 1.0: the best of everything scored (steps save equal cost here, so each moves to its best candidate).
    assert points[-1].score == max(scores.values())
    assert points[0].width == [0.25] * 4  # only the narrowest model fits 0.25


def test_search_keeps_the_budget_over_depths_and_compares_with_uniform(tiny_config):
    model = FlexBertForSequenceClassification(tiny_config).eval()
    cost = flops_cost(tiny_config, seq_length=64)
    scored = []

    def score(width, depth):  # prefers depth, and width in the first layers
        scored.append((tuple(width), depth))
        return depth + sum(w / (index + 1) for index, w in enumerate(width))

    best, uniform = search_operating_point(model, score, cost, budget=0.4, progress=lambda line: None)
    assert best.cost <= 0.4 and uniform.cost <= 0.4 and best.score >= uniform.score
    assert best.cost == pytest.approx(
        subnet_flops(tiny_config, best.width, best.depth, 64) / subnet_flops(tiny_config, 1.0, 1.0, 64)
    )
    assert len(set(scored)) == len(scored)  # every candidate is scored once
    assert best.width != [best.width[0]] * 4  # per-layer widths beat the uniform ones here
    with pytest.raises(ValueError, match=r"fraction of the full model's cost in \(0, 1\]"):
        search_operating_point(model, score, cost, budget=1.5)


def test_operating_points_are_validated_and_selected(tiny_config, tiny_inputs, tmp_path):
    point = {"width": [1.0, 0.5, 0.25, 0.5], "depth": 0.75, "objective": "flops", "budget": 0.4}
    tiny_config.operating_points = {"small": point}
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():
        expected = model(**tiny_inputs, width=point["width"], depth=0.75).logits
        assert torch.equal(model(**tiny_inputs, **model.operating_point("small")).logits, expected)
        with model.subnet(budget="small"):
            assert torch.equal(model(**tiny_inputs).logits, expected)
        model.set_subnet(budget="small")
        assert model.active_subnet == {"width": point["width"], "depth": 0.75}
        model.set_subnet()
        compact = model.export_subnet(budget="small")
        torch.testing.assert_close(compact(**tiny_inputs).logits, expected)
    assert compact.config.exported_subnet == {"width": point["width"], "depth": 0.75, "operating_point": "small"}
    assert compact.config.operating_points is None
    model.save_pretrained(tmp_path)
    assert FlexBertForSequenceClassification.from_pretrained(tmp_path).config.operating_points == {"small": point}
    with pytest.raises(ValueError, match="No operating point 'large'.*'small'"):
        model.set_subnet(budget="large")
    with pytest.raises(ValueError, match="lists 3 widths for 4 layers"):
        FlexBertConfig(**{**tiny_config.to_dict(), "operating_points": {"bad": {"width": [1.0] * 3, "depth": 1.0}}})
    with pytest.raises(ValueError, match="needs a `width` and a `depth`"):
        FlexBertConfig(**{**tiny_config.to_dict(), "operating_points": {"bad": {"width": 0.5}}})


def test_latency_cost_adds_up_the_timed_table(tiny_config, monkeypatch):
    """A candidate's latency is the fixed part (embeddings, head) plus the timed layer of each kept layer's width,
    over the whole model's time. Timings are stubbed here (a timing assertion would be a benchmark, not a test);
    the runners the table times are real and run once."""
    model = FlexBertForSequenceClassification(tiny_config).eval()
    table = {1.0: 4.0, 0.75: 3.0, 0.5: 2.0, 0.25: 1.0, "whole": 20.0}  # 4 layers x 4.0 + 4.0 fixed

    def timed(runners, rounds, warmup):
        assert set(runners) == set(table)
        for run in runners.values():
            run()
        return table

    monkeypatch.setattr("transformers_flex.budget.interleaved_medians", timed)
    cost = latency_cost(model, batch_size=2, seq_length=8)
    assert cost([1.0] * 4, 1.0) == pytest.approx(1.0)
    assert cost([0.25, 0.5, 1.0, 0.75], 1.0) == pytest.approx((4.0 + 1.0 + 2.0 + 4.0 + 3.0) / 20.0)
    kept = model.bert.encoder.kept_layers(model.bert.encoder.make_subnet(1.0, 0.5))
    widths = [0.25, 0.5, 0.75, 1.0]
    assert cost(widths, 0.5) == pytest.approx((4.0 + sum(table[widths[index]] for index in kept)) / 20.0)


@pytest.mark.integration
def test_search_command_stores_a_point_scored_on_heldout_training_data(classification_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(classification_run[0], tmp_path / "run"))  # the shared run stays as it is
    cli_main(["search", str(run_dir), "--budget", "0.5", "--heldout-samples", "8", "--name", "half"])
    printed = capsys.readouterr().out
    assert "| searched |" in printed and "model.set_subnet(budget='half')" in printed
    config = json.loads((run_dir / "gates" / "config.json").read_text())
    point = config["operating_points"]["half"]
    assert point["cost"] <= 0.5 and point["objective"] == "flops" and len(point["width"]) == 6
    model = FlexBertForSequenceClassification.from_pretrained(run_dir / "gates")
    model.set_subnet(budget="half")
    assert model.active_subnet == {"width": point["width"], "depth": point["depth"]}
    with pytest.raises(SystemExit, match="costs at most 0.01"):
        cli_main(["search", str(run_dir), "--budget", "0.01", "--heldout-samples", "8"])
