"""Width-aware LoRA: adapters made with peft's own `LoraConfig`/`get_peft_model` take part at every width and depth
(each sliced layer uses the matching slice of B's rows and A's columns). The reference is the merged model: peft's
`merge_and_unload` folds `scale * B A` into the base weights, whose prefixes every sub-network runs, so a correct
sliced adapter equals it at every width; a bypassed one equals the model with the adapter disabled. What cannot be
sliced (DoRA, other adapter types) raises, and rewiring/grafting refuse a model with adapters."""

import copy

import peft
import pytest
import torch
from conftest import pad_collate, random_classification_dataset
from peft import LoraConfig, PeftModel, get_peft_model

from transformers_flex import FlexBertForSequenceClassification, FlexTrainer, FlexTrainingArguments
from transformers_flex.importance import compute_importance, graft, rewire

ATTENTION_AND_FFN = ["query", "key", "value", "dense"]  # every linear layer a sub-network slices ("dense": 3 kinds)
SUBNETS = [
    {"width": 1.0},
    {"width": 0.75},
    {"width": 0.5},
    {"width": 0.25},
    {"width": [1.0, 0.25, 0.75, 0.5]},
    {"width": 0.5, "depth": 0.5},
]


def adapted(config, **lora) -> torch.nn.Module:
    """A random FlexBert with a LoRA adapter whose B is not zero (peft's default init makes B = 0, a no-op)."""
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(config).eval()
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ATTENTION_AND_FFN, "init_lora_weights": False} | lora
    return get_peft_model(model, LoraConfig(**settings)).eval()


def outputs(model, inputs, **subnet) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, dynamic=False, **subnet).logits


@pytest.mark.parametrize("lora_bias", [False, True])
@pytest.mark.parametrize("subnet", SUBNETS, ids=str)
def test_adapter_takes_part_at_every_subnetwork_and_equals_the_merged_model(
    tiny_config, tiny_inputs, subnet, lora_bias
):
    model = adapted(tiny_config, lora_bias=lora_bias)
    merged = copy.deepcopy(model).merge_and_unload()
    found = outputs(model, tiny_inputs, **subnet)
    torch.testing.assert_close(found, outputs(merged, tiny_inputs, **subnet), atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        without = outputs(model, tiny_inputs, **subnet)
    assert (found - without).abs().max() > 1e-3  # the adapter changed the answer: it was not bypassed


@pytest.mark.parametrize("width", [0.75, 0.5, 0.25])
def test_every_adapter_in_the_subnetwork_gets_a_gradient(tiny_config, tiny_inputs, width):
    model = adapted(tiny_config).train()
    model(**tiny_inputs, labels=torch.tensor([0, 2]), width=width, dynamic=False).loss.backward()
    lora = {name: parameter for name, parameter in model.named_parameters() if "lora_" in name}
    sliced = [name for name in lora if "pooler" not in name]
    assert len(sliced) == 4 * 6 * 2  # 6 linear layers per transformer layer, A and B each
    assert all(lora[name].grad is not None and lora[name].grad.abs().sum() > 0 for name in sliced)
    assert all(not parameter.requires_grad for name, parameter in model.named_parameters() if "lora_" not in name)


def test_dynamic_engine_runs_the_adapter(tiny_config, tiny_inputs):
    config = copy.deepcopy(tiny_config)
    config.update({"exit_layers": [1, 2, 3], "gate_block_size": 2})
    model = adapted(config)
    merged = copy.deepcopy(model).merge_and_unload()
    with torch.no_grad():
        found = model.dynamic_forward(**tiny_inputs, threshold=0.5)
        expected = merged.dynamic_forward(**tiny_inputs, threshold=0.5)
    assert found.layer_widths.tolist() == expected.layer_widths.tolist() and found.layer_widths.min() < 1.0
    torch.testing.assert_close(found.logits, expected.logits, atol=1e-5, rtol=1e-5)


def test_saved_adapter_loads_with_peft_and_merged_model_exports(tiny_config, tiny_inputs, tmp_path):
    model = adapted(tiny_config)
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)  # the same random base model
    base = FlexBertForSequenceClassification(tiny_config).eval()
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(outputs(loaded, tiny_inputs, width=0.5), outputs(model, tiny_inputs, width=0.5))
    compact = copy.deepcopy(model).merge_and_unload().export_subnet(width=0.5, depth=0.75)
    expected = outputs(model, tiny_inputs, width=0.5, depth=0.75)
    torch.testing.assert_close(outputs(compact, tiny_inputs), expected, atol=1e-5, rtol=1e-5)


def test_what_cannot_be_sliced_is_refused(tiny_config, tiny_inputs):
    dora = adapted(tiny_config, use_dora=True)
    outputs(dora, tiny_inputs, width=1.0)  # whole layers: peft runs DoRA itself
    with pytest.raises(NotImplementedError, match="DoRA"):
        outputs(dora, tiny_inputs, width=0.5)
    torch.manual_seed(0)
    ia3 = get_peft_model(
        FlexBertForSequenceClassification(tiny_config),
        peft.IA3Config(target_modules=["query", "dense"], feedforward_modules=["dense"]),
    )
    with pytest.raises(NotImplementedError, match="LoRA on nn.Linear modules"):
        outputs(ia3.eval(), tiny_inputs, width=0.5)


def test_rewiring_and_grafting_come_before_adapters(tiny_config, tiny_inputs):
    model = adapted(tiny_config)
    flexbert = model.base_model.model
    batches = [{**tiny_inputs, "labels": torch.tensor([0, 1])}]
    importance = compute_importance(flexbert, batches)
    with pytest.raises(ValueError, match="Rewiring rewrites the base weights"):
        rewire(flexbert, importance)
    with pytest.raises(ValueError, match="Grafting rewrites the base weights"):
        graft(flexbert, importance)


def test_width_stage_trains_only_the_adapters(tiny_config, tmp_path):
    torch.manual_seed(0)
    teacher = FlexBertForSequenceClassification(tiny_config)
    student = get_peft_model(copy.deepcopy(teacher), LoraConfig(r=4, target_modules=ATTENTION_AND_FFN))
    before = {name: value.clone() for name, value in student.named_parameters()}
    args = FlexTrainingArguments(
        output_dir=str(tmp_path),
        flex_stage="width",
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    data = random_classification_dataset(24)
    FlexTrainer(model=student, args=args, teacher_model=teacher, train_dataset=data, data_collator=pad_collate).train()
    changed = {name for name, value in student.named_parameters() if not torch.equal(value, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_B" in name and "layer.3.output.dense" in name for name in changed)  # narrow widths too
