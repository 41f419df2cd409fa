"""A text-classification pipeline for FlexBert checkpoints: any sub-network, or the dynamic engine with what each
input cost.

`FlexBertTextClassificationPipeline` (task `flex-text-classification`) is transformers' `text-classification`
pipeline (same inputs, `top_k`, `function_to_apply`, text pairs as `{"text", "text_pair"}`) plus the sub-network of
the call (`width=`, `depth=`) and dynamic inference (`dynamic=True`, with the exit `criterion`/`threshold` and
`use_gates`/`use_ramps` of `dynamic_forward`). In dynamic mode every result also says what its input cost: the layer
it exited after, the width every layer ran at and its FLOPs. It has a task name of its own because registering a
pipeline under a built-in name ("text-classification") would replace that pipeline for every model.

Part of the portable unit copied into every sequence-classification checkpoint: imports only transformers and
`flexbert_qa.py` (its tokenizer fix).
"""

from typing import Any

from transformers.pipelines.text_classification import TextClassificationPipeline

from .flexbert_qa import keep_segment_ids

PIPELINE_TASK = "flex-text-classification"
# What a classification checkpoint's config names for `trust_remote_code` users (`pipeline(model=<checkpoint>)`).
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "flexbert_classification.FlexBertTextClassificationPipeline",
        "pt": ["AutoModelForSequenceClassification"],
        "type": "text",
    }
}


class FlexBertTextClassificationPipeline(TextClassificationPipeline):
    """Text classification at a static sub-network or on the dynamic engine.

        classifier = pipeline("flex-text-classification", model="runs/sst2/gates", trust_remote_code=True)
        classifier("a gripping film", width=0.5)  # [{"label": "positive", "score": 0.97}]
        classifier("a gripping film", dynamic=True, threshold=0.3)
        # [{"label": "positive", "score": 0.96, "exit_layer": 2, "layer_widths": [1.0, 0.5, 0, 0, 0, 0],
        #   "flops": 1.2e8}]

    Call arguments, besides those of `text-classification`: `width` (float or per-layer list), `depth`, `dynamic`
    (default: `config.dynamic_inference`), and for dynamic calls `criterion`, `threshold`, `use_gates`,
    `use_ramps`. With `batch_size=`, inputs run as padded batches; the engine gives each input the answer, exit layer
    and widths it gets alone. Dynamic results carry `exit_layer` (1-based), `layer_widths` (0 for layers not run)
    and `flops` (at the input's real length) in every returned dict.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        keep_segment_ids(self.tokenizer, self.model)

    def check_model_type(self, supported_models) -> None:
        """Accept any sequence-classification model: the base check lists only built-in architectures, so it
        would log an error for every remote-code FlexBert."""

    def _sanitize_parameters(
        self,
        width: float | list[float] | None = None,
        depth: float | None = None,
        dynamic: bool | None = None,
        criterion: str | None = None,
        threshold: float | None = None,
        use_gates: bool | None = None,
        use_ramps: bool | None = None,
        **kwargs,
    ) -> tuple[dict, dict, dict]:
        preprocess, _, postprocess = super()._sanitize_parameters(**kwargs)
        forward = {
            "width": width,
            "depth": depth,
            "dynamic": dynamic,
            "criterion": criterion,
            "threshold": threshold,
            "use_gates": use_gates,
            "use_ramps": use_ramps,
        }
        return preprocess, {key: value for key, value in forward.items() if value is not None}, postprocess

    def _forward(self, model_inputs: dict, width=None, depth=None, dynamic=None, **exit_options) -> dict:
        if getattr(self.model.config, "model_type", None) != "flexbert":  # other models have no sub-networks
            if width is not None or depth is not None or dynamic or exit_options:
                raise ValueError(f"A {type(self.model).__name__} has no sub-networks: drop width/depth/dynamic.")
            return super()._forward(model_inputs)
        if dynamic is None:
            dynamic = bool(getattr(self.model.config, "dynamic_inference", False))
        if not dynamic:
            if exit_options:
                raise ValueError(f"{sorted(exit_options)} only apply to dynamic inference: pass `dynamic=True`.")
            return {"logits": self.model(**model_inputs, width=width, depth=depth, dynamic=False).logits}
        output = self.model.dynamic_forward(**model_inputs, width=width, depth=depth, **exit_options)
        return {
            "logits": output.logits,
            "exit_layer": output.exit_layers,
            "layer_widths": output.layer_widths,
            "flops": output.flops,
        }

    def postprocess(self, model_outputs: dict, **kwargs) -> dict | list[dict]:
        results = super().postprocess(model_outputs, **kwargs)
        if "exit_layer" not in model_outputs:
            return results
        cost: dict[str, Any] = {
            "exit_layer": int(model_outputs["exit_layer"][0]),
            "layer_widths": [float(width) for width in model_outputs["layer_widths"][0]],
            "flops": float(model_outputs["flops"][0]),
        }
        if isinstance(results, dict):
            return results | cost
        return [result | cost for result in results]  # `top_k`: every label's entry carries the input's cost


__all__ = ["CUSTOM_PIPELINES", "PIPELINE_TASK", "FlexBertTextClassificationPipeline"]
