"""GEEP's knowledgeable final classifier: a learned mix of several layers' [CLS] states (docs/algorithms.md §8)."""

import pytest
import torch

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.export import to_bert
from transformers_flex.inference import bucketed_forward


@pytest.fixture
def mixed_model(tiny_config):
    tiny_config.knowledgeable_layers, tiny_config.exit_layers = [1, 3, 4], [1, 2]
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():
        model.layer_mix.weights.copy_(torch.tensor([0.3, -1.0, 0.8]))
        model.classifier.weight.mul_(100)  # spread the ramps' (copied) entropies
    model.copy_head_to_off_ramps()
    return model


def manual_logits(model, inputs) -> torch.Tensor:
    """softmax(weights)-mix of the listed layers' [CLS] states of the layers that ran -> pooler -> classifier."""
    with torch.no_grad():
        hidden_states = model.bert(**inputs, output_hidden_states=True).hidden_states
        ran = [index + 1 for index in model.bert.encoder.active_layers]
        present = [i for i, layer in enumerate(model.config.knowledgeable_layers) if layer in ran]
        weights = model.layer_mix.weights[present].softmax(dim=0)
        states = [hidden_states[ran.index(model.config.knowledgeable_layers[i]) + 1][:, 0] for i in present]
        mixed = sum(weight * state for weight, state in zip(weights, states))
        return model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(mixed)))


@pytest.mark.parametrize(("width", "depth"), [(1.0, 1.0), (0.5, 0.5)])
def test_final_classifier_reads_the_mix_of_the_layers_that_ran(mixed_model, tiny_inputs, width, depth):
    with mixed_model.subnet(width=width, depth=depth), torch.no_grad():
        logits = mixed_model(**tiny_inputs).logits
        expected = manual_logits(mixed_model, tiny_inputs)
        plain_last_layer = mixed_model.classifier(mixed_model.bert(**tiny_inputs).pooler_output)
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(logits, plain_last_layer, atol=1e-3)  # the mix really changes the answer
    assert mixed_model(**tiny_inputs).hidden_states is None  # read internally, returned only when asked


def test_mix_weights_load_as_a_uniform_mix_when_absent(tiny_config, tmp_path):
    FlexBertForSequenceClassification(tiny_config).save_pretrained(tmp_path)
    loaded = FlexBertForSequenceClassification.from_pretrained(tmp_path, knowledgeable_layers=[2, 4])
    assert torch.equal(loaded.layer_mix.weights, torch.zeros(2))


def test_engine_and_geep_buckets_use_the_mix(mixed_model, tiny_inputs):
    with torch.no_grad():
        expected = mixed_model(**tiny_inputs).logits
    never_exit = mixed_model.dynamic_forward(**tiny_inputs, threshold=0.0)
    torch.testing.assert_close(never_exit.logits, expected, atol=1e-5, rtol=0)
    bucketed = bucketed_forward(
        mixed_model,
        tiny_inputs["input_ids"],
        torch.tensor([4, 4]),
        tiny_inputs["attention_mask"],
        tiny_inputs["token_type_ids"],
    )
    torch.testing.assert_close(bucketed.logits, expected, atol=1e-5, rtol=0)


def test_batched_exits_with_the_mix_equal_one_example_at_a_time(mixed_model):
    generator = torch.Generator().manual_seed(2)
    lengths = torch.tensor([3, 9, 6, 9, 4, 8, 2, 7])
    attention_mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    input_ids = torch.randint(1, 99, (8, 9), generator=generator) * attention_mask
    with torch.no_grad():
        first_ramp = mixed_model.ramp_logits(
            mixed_model(input_ids, attention_mask, output_hidden_states=True).hidden_states
        )[1]
    entropies = -(first_ramp.log_softmax(-1).exp() * first_ramp.log_softmax(-1)).sum(-1).sort().values
    threshold = float(entropies[3] + entropies[4]) / 2  # about half leave after layer 1
    batched = mixed_model.dynamic_forward(input_ids, attention_mask, threshold=threshold)
    singles = [
        mixed_model.dynamic_forward(
            input_ids[i : i + 1, : lengths[i]], attention_mask[i : i + 1, : lengths[i]], threshold=threshold
        )
        for i in range(8)
    ]
    assert len(set(batched.exit_layers.tolist())) >= 2
    assert torch.equal(torch.cat([s.exit_layers for s in singles]), batched.exit_layers)
    torch.testing.assert_close(torch.cat([s.logits for s in singles]), batched.logits, atol=1e-5, rtol=0)


def test_export_keeps_the_mix_of_kept_layers(mixed_model, tiny_inputs):
    compact = mixed_model.export_subnet(width=0.5, depth=0.5)  # every_other keeps layers 1 and 3
    assert compact.config.knowledgeable_layers == [1, 2]
    torch.testing.assert_close(compact.layer_mix.weights, torch.tensor([0.3, -1.0]))
    with torch.no_grad(), mixed_model.subnet(width=0.5, depth=0.5):
        expected = mixed_model(**tiny_inputs).logits
    with torch.no_grad():
        torch.testing.assert_close(compact(**tiny_inputs).logits, expected, atol=1e-5, rtol=0)


def test_bad_mixes_are_clear_errors(mixed_model, tiny_config):
    with pytest.raises(ValueError, match="knowledgeable"):
        to_bert(mixed_model)
    with pytest.raises(ValueError, match="knowledgeable_layers"):
        tiny_config.knowledgeable_layers = [3, 1]
    mixed_model.config.depth_rule = "prefix"
    with torch.no_grad(), mixed_model.subnet(depth=0.25), pytest.raises(ValueError, match="None of the"):
        mixed_model.layer_mix({2: torch.zeros(1, 64)})


def test_shared_exit_training_learns_the_mix(mixed_model, tmp_path):
    """GEEP's one-step training: backbone, knowledgeable classifier (with its mix) and ramps learn together."""
    from conftest import pad_collate, random_classification_dataset
    from test_trainer import make_args

    from transformers_flex import FlexTrainer

    before = mixed_model.layer_mix.weights.detach().clone()
    args = make_args(tmp_path, flex_stage="ramps", ramp_training="shared_exit", max_steps=2)
    trainer = FlexTrainer(
        model=mixed_model, args=args, train_dataset=random_classification_dataset(16), data_collator=pad_collate
    )
    trainer.train()
    assert not torch.equal(mixed_model.layer_mix.weights, before)


def test_export_that_drops_every_mixed_layer_is_refused(tiny_config):
    tiny_config.knowledgeable_layers = [2, 4]  # every_other depth 0.5 keeps layers 1 and 3
    model = FlexBertForSequenceClassification(tiny_config)
    with pytest.raises(ValueError, match="keeps none of the knowledgeable layers"):
        model.export_subnet(depth=0.5)
