"""FlexBert: a BERT encoder whose width (heads + FFN neurons) and depth change at run time, from one weight set.

Parameter names are BERT's, so every BERT checkpoint loads unchanged. The building blocks live in
`flexbert_layers.py` and the batched dynamic engine the heads share in `flexbert_engine.py`; this file holds the
pre-trained model class and the heads.

Part of the portable unit copied into every checkpoint: imports only torch/transformers and flat siblings.
"""

import copy
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)

from .configuration_flexbert import FlexBertConfig
from .flexbert_engine import FlexBertDynamicMixin, prediction_entropy
from .flexbert_layers import (
    FlexBertAttentionRamp,
    FlexBertEmbeddings,
    FlexBertEncoder,
    FlexBertLayerMix,
    FlexBertOffRamp,
    FlexBertPooler,
    FlexBertSpanRamp,
    FlexBertWidthGate,
    Subnet,
    Width,
    additive_attention_mask,
    cls_head_macs,
    heads_for_width,
    kept_layer_indices,
    last_real_column,
    layer_macs,
    neurons_for_heads,
    subnet_layer_shapes,
    width_shape,
)

CARD_NAME = "README.md"
CARD_TAG = "transformers-flex"  # in the metadata of the cards transformers-flex writes
CARD_PLOT_NAME = "flexbert_subnets.png"  # the sub-network plot a card shows


@dataclass
class FlexBertDynamicOutput(SequenceClassifierOutput):
    """Sequence classification output of dynamic (per-example) inference.

    Args:
        exit_layers (`torch.LongTensor` of shape `(batch_size,)`):
            1-based layer after which each example answered (its off-ramp's, or the last layer's classifier).
        layer_widths (`torch.FloatTensor` of shape `(batch_size, num_hidden_layers)`):
            Width multiplier every layer ran at for each example; 0 for the layers it did not run.
        flops (`torch.DoubleTensor` of shape `(batch_size,)`):
            FLOPs each example spent at its real (unpadded) length: layers, gates, off-ramps and head that ran.
    """

    exit_layers: torch.LongTensor | None = None
    layer_widths: torch.FloatTensor | None = None
    flops: torch.DoubleTensor | None = None


def width_gates(config: FlexBertConfig) -> nn.ModuleDict:
    """The width gates of `config.gate_layers`, keyed by the number of layers run before them ("0": the in-gate on
    the embeddings, which mean-pools: the [CLS] embedding is the same for every input)."""
    return nn.ModuleDict(
        {
            str(layer): FlexBertWidthGate(config, mean_pool=layer == 0 or config.gate_pooling == "mean")
            for layer in config.gate_layers
        }
    )


class FlexBertPreTrainedModel(PreTrainedModel):
    config_class = FlexBertConfig
    config: FlexBertConfig
    base_model_prefix = "bert"
    _supports_sdpa = True
    _no_split_modules = ["FlexBertEmbeddings", "FlexBertLayer"]
    # BERT checkpoints may carry these buffers (and pre-training heads); they are not part of FlexBert.
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"token_type_ids", r"^cls\."]
    # forward has no **kwargs, so the Trainer must not hand it loss kwargs and divides the loss for gradient
    # accumulation itself (docs/architecture.md#gradient-accumulation).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FlexBertLayerMix):
            init.zeros_(module.weights)  # built on the meta device: initialise here, not in __init__

    # --- sub-network selection -------------------------------------------------------------------------------

    @property
    def _encoder(self) -> FlexBertEncoder:
        return self.base_model.encoder

    def set_subnet(self, width: Width = 1.0, depth: float = 1.0, budget: str | None = None) -> None:
        """Make the sub-network of width `width` (a multiplier, or one per layer) and depth `depth` the default: what
        runs when neither the call (`width=`/`depth=`) nor a `with model.subnet(...)` block chooses one. The default
        is shared by every thread using the model; per-request choices belong in the call or in `subnet`.
        `budget=NAME` selects a named operating point of `config.operating_points` instead.

        Raises `ValueError` for a width outside (0, 1], a per-layer list of the wrong length, a depth outside
        (0, 1], or an unknown operating point.
        """
        if budget is not None:
            width, depth = self.operating_point(budget).values()
        self._encoder.set_subnet(width=width, depth=depth)

    @contextmanager
    def subnet(
        self, width: Width = 1.0, depth: float = 1.0, budget: str | None = None
    ) -> Iterator["FlexBertPreTrainedModel"]:
        """Run the (width, depth) sub-network (or the operating point `budget`) inside the block. The choice is local
        to the calling thread or asyncio task (a `contextvars` context), so concurrent requests on one model never
        see each other's; the `set_subnet` default is untouched."""
        if budget is not None:
            width, depth = self.operating_point(budget).values()
        with self._encoder.subnet(width=width, depth=depth):
            yield self

    def operating_point(self, name: str) -> dict:
        """`{"width": [...], "depth": ...}` of the named operating point (`transformers-flex search`), to pass to a
        call: `model(**batch, **model.operating_point("flops0.4"))`."""
        points = self.config.operating_points or {}
        if name not in points:
            raise ValueError(
                f"No operating point {name!r} in this model's config; it has {sorted(points) or 'none'} "
                "(`transformers-flex search RUN_DIR --budget ...` adds them)."
            )
        return {"width": points[name]["width"], "depth": points[name]["depth"]}

    @property
    def active_subnet(self) -> dict:
        """The sub-network a call without its own choice runs here, as `{"width": ..., "depth": ...}`."""
        return self._encoder.active_subnet.as_dict()

    def resolve_subnet(self, width: Width | None = None, depth: float | None = None) -> Subnet:
        """The sub-network of one call: its own `width`/`depth` (a missing one is 1.0, as in `set_subnet`), else the
        innermost `with model.subnet(...)` of the caller's context, else the `set_subnet` default."""
        if width is None and depth is None:
            return self._encoder.active_subnet
        return self._encoder.make_subnet(1.0 if width is None else width, 1.0 if depth is None else depth)

    def depth_head(self, layers_run: int) -> str | None:
        """The off-ramp that answers a sub-network of `layers_run` layers: none here (a bare encoder has no head;
        the task heads answer with their ramps under `config.depth_heads="ramps"`)."""
        return None

    def subnet_shape(self, width: Width = 1.0, depth: float = 1.0) -> list[tuple[int, int, int]]:
        """`(layer index, heads, FFN neurons)` of every layer the given sub-network runs."""
        return subnet_layer_shapes(self.config, width, depth)

    def export_subnet(
        self, width: Width = 1.0, depth: float = 1.0, budget: str | None = None
    ) -> "FlexBertPreTrainedModel":
        """A physically smaller copy that computes exactly what the given sub-network (or the operating point
        `budget`) computes.

        Its config lists each layer's head count and FFN size (`layer_num_heads`, `layer_intermediate_sizes`) and
        records what it was cut from (`exported_subnet`); it saves and loads like any FlexBert checkpoint.
        """
        if budget is not None:
            width, depth = self.operating_point(budget).values()
        shape = self.subnet_shape(width=width, depth=depth)
        kept = [index for index, _, _ in shape]
        mixed = [layer for layer in self.config.knowledgeable_layers or [] if layer - 1 in kept]
        if self.config.knowledgeable_layers is not None and not mixed:
            raise ValueError(
                f"This sub-network keeps none of the knowledgeable layers {self.config.knowledgeable_layers}; "
                "export a deeper one."
            )
        # With `depth_heads="ramps"` a shallower sub-network's off-ramp becomes the export's final head, or, when it
        # is no final head's shape (attention ramps), stays an off-ramp after the export's last layer and answers it.
        depth_ramp = self.depth_head(len(kept))
        head_sources = {} if depth_ramp is None else self.ramp_as_final_head(depth_ramp)
        keeps_depth_ramp = head_sources is None
        last = kept[-1] + 1  # the export's last layer, numbered as in the supernet (1-based)
        exit_layers = [layer for layer in self.config.exit_layers if layer - 1 in kept and layer < last]
        # The last layer stays listed if it was (the final head answers there), except where the export would build
        # a ramp there (`depth_heads="ramps"`): only for the depth's attention ramp it keeps.
        listed_last = last in self.config.exit_layers and self.config.depth_heads != "ramps"
        if keeps_depth_ramp or listed_last:
            exit_layers.append(last)
        config = copy.deepcopy(self.config)
        # One update, validated once at the end: the fields depend on each other (layer counts and per-layer lists).
        config.update(
            {
                "num_hidden_layers": len(shape),
                "layer_num_heads": [heads for _, heads, _ in shape],
                "layer_intermediate_sizes": [neurons for _, _, neurons in shape],
                # Widths and depths of the export are relative to its own (smaller) layers.
                "width_mults": [1.0],
                "depth_mults": [1.0],
                "gate_widths": [1.0],  # gates pick supernet widths: not exported
                "gate_block_size": 0,
                # `depth_heads` stays the supernet's: a kept attention ramp after the last layer answers the export.
                "exit_layers": [kept.index(layer - 1) + 1 for layer in exit_layers],
                "knowledgeable_layers": None if not mixed else [kept.index(layer - 1) + 1 for layer in mixed],
                "operating_points": None,  # the export is one of them
                "exported_subnet": {"width": width, "depth": depth, "operating_point": budget},
            }
        )
        compact = type(self)(config).to(device=self.device, dtype=self.dtype)
        source = self.state_dict()
        compact_state = {}
        for name, tensor in compact.state_dict().items():
            # Layers and off-ramps are renumbered: compact layer i is supernet layer kept[i].
            source_name = re.sub(r"encoder\.layer\.(\d+)\.", lambda m: f"encoder.layer.{kept[int(m[1])]}.", name)
            source_name = re.sub(
                r"^off_ramps\.(\d+)\.", lambda m: f"off_ramps.{kept[int(m[1]) - 1] + 1}.", source_name
            )
            if name == "layer_mix.weights":  # the mix keeps the weights of the layers the export keeps
                positions = [self.config.knowledgeable_layers.index(layer) for layer in mixed]
                compact_state[name] = source[name][positions].clone()
                continue
            source_name = (head_sources or {}).get(name, source_name)
            # Every sliced tensor keeps a prefix along each dimension (heads and neurons are prefixes).
            compact_state[name] = source[source_name][tuple(slice(0, size) for size in tensor.shape)].clone()
        compact.load_state_dict(compact_state)
        compact.train(self.training)
        return compact

    # --- shared forward pieces ---------------------------------------------------------------------------------

    def head_pipeline(self) -> tuple[dict, type] | None:
        """The pipeline of this head: the `custom_pipelines` entry its config names and the pipeline class, whose
        file every checkpoint carries (`None`: the bare encoder has no pipeline)."""
        return None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the head's pipeline (`head_pipeline`): its code file goes into the
        checkpoint and the config names it in `custom_pipelines`, so that `pipeline(<its task>, model=<checkpoint>,
        trust_remote_code=True)` works without this package. Refuses a config whose `gate_widths` no longer match
        the gates (the checkpoint would not load)."""
        from transformers.dynamic_module_utils import custom_object_save

        for gate in getattr(self, "width_gates", {}).values():
            if gate.classifier.out_features != len(self.config.gate_widths):
                raise ValueError(
                    f"The width gates have {gate.classifier.out_features} classes but `config.gate_widths` lists "
                    f"{len(self.config.gate_widths)} widths: give one width per class before saving."
                )
        pipeline = self.head_pipeline()
        if pipeline is not None:
            self.config.custom_pipelines = {**getattr(self.config, "custom_pipelines", {}), **pipeline[0]}
        output = super().save_pretrained(save_directory, *args, **kwargs)
        if pipeline is not None and kwargs.get("is_main_process", True):
            custom_object_save(pipeline[1], save_directory)
        return output

    def push_to_hub(self, repo_id: str, *args, model_card: str | None = None, **kwargs):
        """`push_to_hub`, ending with this model's card: `model_card` (markdown) if given, else the transformers-flex
        card (`transformers-flex card`) of the local checkpoint it was loaded from, with its plot. transformers'
        own push would upload the repo's existing card or a generic one instead; without a card of ours, it does.
        Weights, config (with `auto_map`) and every portable code file go up in one commit."""
        source = Path(str(self.config._name_or_path))
        if model_card is None and (source / CARD_NAME).is_file():
            text = (source / CARD_NAME).read_text()
            model_card = text if CARD_TAG in text.split("---")[1 if text.startswith("---") else 0] else None
        if model_card is None:
            return super().push_to_hub(repo_id, *args, **kwargs)
        from huggingface_hub import HfApi

        api = HfApi(token=kwargs.get("token"))
        repo = api.create_repo(repo_id, private=kwargs.get("private"), exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=kwargs.get("max_shard_size", "50GB"))
            Path(folder, CARD_NAME).write_text(model_card)
            if (source / CARD_PLOT_NAME).is_file():  # the plot the card shows
                shutil.copy(source / CARD_PLOT_NAME, Path(folder, CARD_PLOT_NAME))
            return api.upload_folder(
                repo_id=repo.repo_id,
                folder_path=folder,
                commit_message=kwargs.get("commit_message") or "Upload FlexBert model",
                revision=kwargs.get("revision"),
                create_pr=kwargs.get("create_pr", False),
            )

    @staticmethod
    def _reject_head_mask(head_mask: torch.Tensor | None) -> None:
        if head_mask is not None:
            raise ValueError(
                "FlexBert does not take `head_mask` (transformers 5 removed it); choose heads with "
                "`model.set_subnet(width=...)`, or see `transformers_flex.importance` for head gates."
            )


class FlexBertModel(FlexBertPreTrainedModel):
    """The bare FlexBert encoder (embeddings, flexible layers, optional pooler)."""

    def __init__(self, config: FlexBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = FlexBertEmbeddings(config)
        self.encoder = FlexBertEncoder(config)
        self.pooler = FlexBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        width: Width | None = None,
        depth: float | None = None,
        pool: bool = True,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        width (`float` or `list[float]`, *optional*), depth (`float`, *optional*):
            The sub-network of this call only (see `resolve_subnet`); by default the active one.
        pool (`bool`, *optional*, defaults to `True`):
            Run the pooler; a head that does not read `pooler_output` passes False (it is then None).
        """
        self._reject_head_mask(head_mask)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        mask = additive_attention_mask(attention_mask, embeddings.dtype)
        sequence_output, hidden_states, attentions = self.encoder(
            embeddings,
            mask,
            subnet=self.resolve_subnet(width, depth),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None and pool else None,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict is not False else output.to_tuple()


class FlexBertForSequenceClassification(FlexBertDynamicMixin, FlexBertPreTrainedModel):
    """FlexBert with BERT's classification head (pooler -> dropout -> linear) for GLUE-style tasks."""

    def __init__(self, config: FlexBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = FlexBertModel(config)
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        ramp_class = FlexBertAttentionRamp if config.ramp_type == "attention" else FlexBertOffRamp
        self.off_ramps = nn.ModuleDict({str(layer): ramp_class(config) for layer in config.off_ramp_layers})
        self.layer_mix = FlexBertLayerMix(config) if config.knowledgeable_layers else None
        self.width_gates = width_gates(config)
        self.post_init()

    @torch.no_grad()
    def copy_head_to_off_ramps(self, layers: Sequence[int] | None = None) -> None:
        """Initialise off-ramps as copies of the final pooler and classifier (Flexible BERT's `copy` mode): those
        after the given 1-based `layers`, or all of them."""
        if self.config.ramp_type != "pooler":
            raise ValueError(
                f"Only `ramp_type='pooler'` ramps can copy the final head, not {self.config.ramp_type!r}."
            )
        chosen = self.off_ramps.keys() if layers is None else [str(layer) for layer in layers]
        for ramp in [self.off_ramps[name] for name in chosen]:
            ramp.pooler.load_state_dict(self.bert.pooler.state_dict())
            ramp.classifier.load_state_dict(self.classifier.state_dict())

    def final_logits(self, hidden: torch.Tensor, cls_states: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The final classifier on the last layer's states, or on the mix of `cls_states` (`{1-based layer:
        (batch, hidden)}`) for a knowledgeable classifier."""
        if self.layer_mix is not None:
            hidden = self.layer_mix(cls_states)[:, None]  # the pooler reads position 0
        return self.classifier(self.dropout(self.bert.pooler(hidden)))

    def ramp_logits(
        self,
        hidden_states: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor | None = None,
        subnet: Subnet | None = None,
    ) -> dict[int, torch.Tensor]:
        """Logits of every off-ramp whose layer ran, keyed by its 1-based layer, from the hidden states of a forward
        of `subnet` (by default the active sub-network)."""
        ran = self.bert.encoder.kept_layers(subnet)
        return {
            int(layer): ramp(hidden_states[ran.index(int(layer) - 1) + 1], attention_mask)
            for layer, ramp in self.off_ramps.items()
            if int(layer) - 1 in ran
        }

    # --- what the ramps and gates stages need (ramp_training.py, gate_training.py) -----------------------------

    def training_targets(self, inputs: dict) -> tuple[dict, torch.Tensor | None]:
        """The model inputs of a batch and its gold labels (`None` when it has none)."""
        return {key: value for key, value in inputs.items() if key != "labels"}, inputs.get("labels")

    def head_logits(self, outputs) -> torch.Tensor:
        """The final head's logits in the layout `ramp_logits` gives the off-ramps'."""
        return outputs.logits

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.classification_loss(logits, labels)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BERT's loss choice: MSE for regression, cross-entropy for single-label, BCE for multi-label."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    # --- the dynamic engine's hooks (flexbert_engine.py; docs/algorithms.md §5-9) -----------------------------

    def answer_layers(self, active_layers: list[int]) -> list[int]:
        return [int(layer) for layer in self.off_ramps if int(layer) - 1 in active_layers[:-1]]

    def layer_answer(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, cls_states: dict[int, torch.Tensor], last: bool
    ) -> torch.Tensor:
        if last and self.depth_head(layer) is None:
            return self.final_logits(hidden, cls_states).float()
        return self.off_ramps[str(layer)](hidden, mask).float()

    def ramp_as_final_head(self, ramp: str) -> dict[str, str] | None:
        """`{final head parameter: off-ramp parameter}`: an export whose final head is the off-ramp `ramp`; None for
        an attention ramp, which has no final head's shape (the export keeps it as its last layer's ramp)."""
        if self.config.ramp_type != "pooler":
            return None
        parts = ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias")
        return {("bert." if part.startswith("pooler") else "") + part: f"off_ramps.{ramp}.{part}" for part in parts}

    def answer_macs(self, layer: int, lengths: torch.Tensor, last: bool) -> torch.Tensor:
        if last and self.depth_head(layer) is None:  # the pooler and classifier (a layer mix: not counted)
            return torch.full_like(lengths, cls_head_macs(self.config.hidden_size, self.num_labels))
        return self.off_ramps[str(layer)].macs(lengths)

    def answer_uncertainty(self, answer: torch.Tensor, criterion: str, mask: torch.Tensor) -> torch.Tensor:
        return prediction_entropy(answer, normalized=criterion == "normalized_entropy")

    def predictions_agree(
        self, previous: torch.Tensor | None, answer: torch.Tensor, regression_tolerance: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """PABEE: the argmax agrees with the previous ramp's; regression: within `regression_tolerance`."""
        regression = answer.shape[-1] == 1
        prediction = answer[:, 0] if regression else answer.argmax(dim=-1).to(answer.dtype)
        if previous is None:
            return prediction, None
        if regression:
            return prediction, (prediction - previous).abs() < regression_tolerance
        return prediction, prediction == previous

    def empty_answers(self, batch_size: int, seq_length: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch_size, self.num_labels, device=device)

    def store_answers(self, answers: torch.Tensor, rows: torch.Tensor, answer: torch.Tensor) -> None:
        answers[rows] = answer

    def dynamic_output(self, answers, exit_layers, layer_widths, flops, labels) -> "FlexBertDynamicOutput":
        return FlexBertDynamicOutput(
            loss=self.classification_loss(answers, labels) if labels is not None else None,
            logits=answers,
            exit_layers=exit_layers,
            layer_widths=layer_widths,
            flops=flops,
        )

    def cls_state_layers(self) -> Sequence[int]:
        return () if self.layer_mix is None else self.layer_mix.layers

    def head_pipeline(self) -> tuple[dict, type]:
        # Imported here: the pipelines machinery is only needed when saving (and remote code stays light to load).
        from .flexbert_classification import CUSTOM_PIPELINES, FlexBertTextClassificationPipeline

        return CUSTOM_PIPELINES, FlexBertTextClassificationPipeline

    def check_exit_settings(self, criterion: str, use_ramps: bool) -> None:
        super().check_exit_settings(criterion, use_ramps)
        # Ramps that can stop a row early (an export's ramp after its last layer is its answer, never an exit).
        early = [layer for layer in self.off_ramps if int(layer) < self.config.num_hidden_layers]
        if use_ramps and early and self.num_labels == 1 and criterion != "patience":
            raise ValueError("A regression model has no prediction entropy: use `criterion='patience'`.")

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        width: Width | None = None,
        depth: float | None = None,
        dynamic: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        width (`float` or `list[float]`, *optional*), depth (`float`, *optional*):
            The sub-network of this call only (see `resolve_subnet`); by default the active one.
        dynamic (`bool`, *optional*):
            Run the dynamic engine (`dynamic_forward`: gates, off-ramps, per-example outputs) or the static model;
            by default the engine in eval mode when `config.dynamic_inference` is set.
        """
        subnet = self.resolve_subnet(width, depth)  # resolved once, so every part of this call runs the same one
        if dynamic is None:
            dynamic = self.config.dynamic_inference and not self.training
        if dynamic:
            self._reject_head_mask(head_mask)
            if output_attentions or output_hidden_states:
                raise ValueError(
                    "Dynamic inference returns no hidden states or attentions (rows leave the batch early); set "
                    "`config.dynamic_inference = False` to get them."
                )
            output = self.dynamic_forward(
                input_ids,
                attention_mask,
                token_type_ids,
                position_ids,
                inputs_embeds,
                labels,
                width=subnet.width,
                depth=subnet.depth,
            )
            return output if return_dict is not False else output.to_tuple()
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        knowledgeable = self.layer_mix is not None
        depth_ramp = self.static_depth_head(subnet.width, subnet.depth)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states or knowledgeable,  # the mix reads several layers
            width=subnet.width,
            depth=subnet.depth,
            pool=depth_ramp is None and not knowledgeable,  # an off-ramp or the layer mix reads no pooler output
        )
        if depth_ramp is not None:  # the prefix's own off-ramp answers it (`config.depth_heads="ramps"`)
            logits = self.off_ramps[depth_ramp](outputs.last_hidden_state, attention_mask)
        elif knowledgeable:
            ran = self.bert.encoder.kept_layers(subnet)
            cls_states = {index + 1: outputs.hidden_states[position + 1][:, 0] for position, index in enumerate(ran)}
            logits = self.final_logits(outputs.last_hidden_state, cls_states)
        else:
            logits = self.classifier(self.dropout(outputs.pooler_output))
        output = SequenceClassifierOutput(
            loss=self.classification_loss(logits, labels) if labels is not None else None,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


@dataclass
class FlexBertDynamicQuestionAnsweringOutput(QuestionAnsweringModelOutput):
    """Extractive QA output of the dynamic engine: start/end logits of every window (positions past a window's
    running length hold the dtype's minimum), and per window the fields of `FlexBertDynamicOutput`.

    Args:
        exit_layers (`torch.LongTensor` of shape `(batch_size,)`): 1-based layer after which each window answered.
        layer_widths (`torch.FloatTensor` of shape `(batch_size, num_hidden_layers)`): width of every layer it ran.
        flops (`torch.DoubleTensor` of shape `(batch_size,)`): FLOPs it spent at its real length.
    """

    exit_layers: torch.LongTensor | None = None
    layer_widths: torch.FloatTensor | None = None
    flops: torch.DoubleTensor | None = None


class FlexBertForQuestionAnswering(FlexBertDynamicMixin, FlexBertPreTrainedModel):
    """FlexBert with BERT's extractive QA head (start and end logits per token). Its windows run on the same
    dynamic engine as the classifier (`dynamic_forward`), with off-ramps (`config.exit_layers`) that are QA heads of
    their own: a window exits when its span distributions are confident (the mean entropy of its start and end
    softmaxes, over its real tokens, below `exit_threshold`; `patience`: consecutive ramps agree on the argmax start
    and end). Pass `exit_groups` (the question of each window) so that a question's windows exit together and
    answer from one classifier. Width gates (`config.gate_block_size`) pick each window's widths, as for the
    classifier."""

    def __init__(self, config: FlexBertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"Question answering needs `num_labels=2` (start and end), got {config.num_labels}.")
        if config.exit_layers and config.ramp_type != "pooler":
            raise ValueError(
                f"Question-answering off-ramps are span heads on every token; `ramp_type={config.ramp_type!r}` is a "
                "classifier ramp: leave it at its default."
            )
        self.num_labels = config.num_labels
        self.bert = FlexBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.off_ramps = nn.ModuleDict({str(layer): FlexBertSpanRamp(config) for layer in config.off_ramp_layers})
        self.width_gates = width_gates(config)
        self.post_init()

    @torch.no_grad()
    def copy_head_to_off_ramps(self, layers: Sequence[int] | None = None) -> None:
        """Initialise off-ramps as copies of the final QA head: those after the given 1-based `layers`, or all."""
        chosen = self.off_ramps.keys() if layers is None else [str(layer) for layer in layers]
        for name in chosen:
            self.off_ramps[name].qa_outputs.load_state_dict(self.qa_outputs.state_dict())

    def ramp_logits(
        self,
        hidden_states: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor | None = None,
        subnet: Subnet | None = None,
    ) -> dict[int, torch.Tensor]:
        """`(batch, 2, length)` start and end logits of every off-ramp whose layer ran, keyed by its 1-based layer,
        from the hidden states of a forward of `subnet` (by default the active sub-network)."""
        ran = self.bert.encoder.kept_layers(subnet)
        return {
            int(layer): ramp(hidden_states[ran.index(int(layer) - 1) + 1]).transpose(1, 2)
            for layer, ramp in self.off_ramps.items()
            if int(layer) - 1 in ran
        }

    @staticmethod
    def span_loss(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """BERT's QA loss: the mean of the start and end cross-entropies. `logits` are `(batch, 2, length)`,
        `positions` `(batch, 2)`; positions outside the input (truncated answers) are ignored."""
        ignored = logits.shape[-1]
        targets = positions.clamp(0, ignored)
        return sum(F.cross_entropy(logits[:, k], targets[:, k], ignore_index=ignored) for k in range(2)) / 2

    # --- what the ramps and gates stages need (ramp_training.py, gate_training.py) -----------------------------

    def training_targets(self, inputs: dict) -> tuple[dict, torch.Tensor | None]:
        """The model inputs of a batch and its gold `(batch, 2)` start and end positions (`None` without them)."""
        targets = ("start_positions", "end_positions")
        positions = None
        if all(key in inputs for key in targets):
            positions = torch.stack([inputs[key].view(-1) for key in targets], dim=1)
        return {key: value for key, value in inputs.items() if key not in targets}, positions

    def head_logits(self, outputs) -> torch.Tensor:
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=1)  # (batch, 2, length), as the ramps'

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.span_loss(logits, labels)

    def head_pipeline(self) -> tuple[dict, type]:
        # Imported here: the pipelines machinery is only needed when saving (and remote code stays light to load).
        from .flexbert_qa import CUSTOM_PIPELINES, FlexBertQuestionAnsweringPipeline

        return CUSTOM_PIPELINES, FlexBertQuestionAnsweringPipeline

    # --- the dynamic engine's hooks (flexbert_engine.py) -------------------------------------------------------

    def answer_layers(self, active_layers: list[int]) -> list[int]:
        return [int(layer) for layer in self.off_ramps if int(layer) - 1 in active_layers[:-1]]

    def layer_answer(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, cls_states: dict[int, torch.Tensor], last: bool
    ) -> torch.Tensor:
        head = self.qa_outputs if last and self.depth_head(layer) is None else self.off_ramps[str(layer)]
        logits = head(hidden).float()  # (rows, length, 2): start and end logits
        # Padding is never an answer: its logits are the dtype's minimum, so the exit criterion ignores it.
        return logits.masked_fill(mask[:, :, None] == 0, torch.finfo(logits.dtype).min)

    def ramp_as_final_head(self, ramp: str) -> dict[str, str]:
        """`{final head parameter: off-ramp parameter}`: an export whose span head is the off-ramp `ramp`."""
        return {f"qa_outputs.{part}": f"off_ramps.{ramp}.qa_outputs.{part}" for part in ("weight", "bias")}

    def answer_macs(self, layer: int, lengths: torch.Tensor, last: bool) -> torch.Tensor:
        return lengths * self.config.hidden_size * self.num_labels  # one linear layer per real token

    def answer_uncertainty(self, answer: torch.Tensor, criterion: str, mask: torch.Tensor) -> torch.Tensor:
        """Span confidence: the mean entropy of the start and end distributions over the window's real tokens
        (`normalized_entropy`: divided by ln(real length), the entropy of a uniform guess)."""
        entropy = prediction_entropy(answer.transpose(1, 2)).mean(dim=1)  # padding has probability 0
        if criterion == "normalized_entropy":
            entropy = entropy / mask.sum(dim=1).clamp(min=2).float().log()
        return entropy

    def predictions_agree(
        self, previous: torch.Tensor | None, answer: torch.Tensor, regression_tolerance: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patience: the argmax start and end positions both agree with the previous ramp's."""
        prediction = answer.argmax(dim=1)  # (rows, 2)
        if previous is None:
            return prediction, None
        return prediction, (prediction == previous).all(dim=1)

    def empty_answers(self, batch_size: int, seq_length: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch_size, seq_length, self.num_labels), torch.finfo(torch.float32).min, device=device)

    def store_answers(self, answers: torch.Tensor, rows: torch.Tensor, answer: torch.Tensor) -> None:
        answers[rows, : answer.shape[1]] = answer  # windows trimmed to their running length

    def dynamic_output(self, answers, exit_layers, layer_widths, flops, labels):
        start_logits, end_logits = answers.unbind(dim=-1)
        return FlexBertDynamicQuestionAnsweringOutput(
            loss=None if labels is None else self.span_loss(answers.transpose(1, 2), labels),
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            exit_layers=exit_layers,
            layer_widths=layer_widths,
            flops=flops,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        width: Width | None = None,
        depth: float | None = None,
        dynamic: bool | None = None,
    ) -> QuestionAnsweringModelOutput | tuple:
        r"""
        width (`float` or `list[float]`, *optional*), depth (`float`, *optional*):
            The sub-network of this call only (see `resolve_subnet`); by default the active one.
        dynamic (`bool`, *optional*):
            Run the dynamic engine (`dynamic_forward`: off-ramps, per-window exit layers and FLOPs) or the static
            model; by default the engine in eval mode when `config.dynamic_inference` is set.
            The engine's loss scores its own logits, in which padding is never a candidate (BERT's loss, the static
            model's, lets padding take some probability).
        """
        if dynamic is None:
            dynamic = self.config.dynamic_inference and not self.training
        positions = None
        if start_positions is not None and end_positions is not None:
            positions = torch.stack([start_positions.view(-1), end_positions.view(-1)], dim=1)
        if dynamic:
            self._reject_head_mask(head_mask)
            output = self.dynamic_forward(
                input_ids,
                attention_mask,
                token_type_ids,
                position_ids,
                inputs_embeds,
                positions,
                width=width,
                depth=depth,
            )
            return output if return_dict is not False else output.to_tuple()
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            width=width,
            depth=depth,
        )
        depth_ramp = self.static_depth_head(width, depth)
        # A shallower sub-network's own span head answers it with `config.depth_heads="ramps"`, else the final one.
        head = self.qa_outputs if depth_ramp is None else self.off_ramps[depth_ramp]
        logits = head(outputs.last_hidden_state)
        start_logits, end_logits = logits.unbind(dim=-1)
        output = QuestionAnsweringModelOutput(
            loss=None if positions is None else self.span_loss(logits.transpose(1, 2), positions),
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = [
    "FlexBertAttentionRamp",
    "FlexBertDynamicOutput",
    "FlexBertDynamicQuestionAnsweringOutput",
    "FlexBertForQuestionAnswering",
    "FlexBertForSequenceClassification",
    "FlexBertModel",
    "FlexBertPreTrainedModel",
    "Subnet",
    "additive_attention_mask",
    "cls_head_macs",
    "heads_for_width",
    "kept_layer_indices",
    "last_real_column",
    "layer_macs",
    "neurons_for_heads",
    "prediction_entropy",
    "subnet_layer_shapes",
    "width_shape",
]
