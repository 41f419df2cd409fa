"""FlexBert configuration: BERT's fields plus the widths, depths, exits and gates of a flexible model.

Part of the portable unit copied into every checkpoint: imports only torch/transformers and flat siblings.
"""

from transformers import PreTrainedConfig

# Every Auto class a FlexBert checkpoint can be loaded with. `save_pretrained` only writes the entry of the
# class being saved, so the whole map is a config default (docs/architecture.md#full-auto-map).
FLEXBERT_AUTO_MAP = {
    "AutoConfig": "configuration_flexbert.FlexBertConfig",
    "AutoModel": "modeling_flexbert.FlexBertModel",
    "AutoModelForSequenceClassification": "modeling_flexbert.FlexBertForSequenceClassification",
    "AutoModelForQuestionAnswering": "modeling_flexbert.FlexBertForQuestionAnswering",
}

DEPTH_RULES = ("every_other", "prefix")
DEPTH_HEADS = ("final", "ramps")
EXIT_CRITERIA = ("entropy", "normalized_entropy", "patience")
RAMP_TYPES = ("pooler", "attention")
GATE_POOLINGS = ("mean", "cls")
# The fields FlexBert adds to BERT's.
FLEX_FIELDS = (
    "width_mults",
    "depth_mults",
    "depth_rule",
    "depth_heads",
    "exit_layers",
    "ramp_type",
    "ramp_attention_size",
    "ramp_attention_heads",
    "exit_criterion",
    "exit_threshold",
    "exit_regression_tolerance",
    "gate_widths",
    "gate_block_size",
    "gate_pooling",
    "knowledgeable_layers",
    "dynamic_inference",
    "layer_num_heads",
    "layer_intermediate_sizes",
    "operating_points",
    "exported_subnet",
)
# Fields `check_flex_fields` reads: assigning any of them after construction re-runs the checks.
CHECKED_FIELDS = frozenset(FLEX_FIELDS) - {"dynamic_inference"} | {
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
}
# Set once construction is done: from then on assignments are checked. Never serialized.
_CHECKS_ARMED = "_flex_checks_armed"


def check_multipliers(name: str, values) -> None:
    """Raise unless `values` is a non-empty list of numbers in (0, 1]."""
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of numbers in (0, 1], got {values!r}.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"`{name}` entries must be numbers in (0, 1], got {value!r} in {values!r}.")


def _check_number(name: str, value) -> None:
    """Raise unless `value` is a real number >= 0 (not a bool, a string or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")


def _check_layer_list(name: str, values, num_layers: int) -> None:
    """Raise unless `values` is an increasing list (sorted, no repeats) of 1-based layer indices."""
    if (
        not isinstance(values, (list, tuple))
        or any(
            isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers for layer in values
        )
        or list(values) != sorted(set(values))
    ):
        raise ValueError(
            f"`{name}` must be an increasing list (sorted, no repeats) of 1-based layer indices in [1, {num_layers}], "
            f"got {values!r}."
        )


def _check_per_layer_sizes(name: str, values, num_layers: int, upper: int) -> None:
    """Raise unless `values` is None or a list of `num_layers` integers in [1, upper]."""
    if values is None:
        return
    if not isinstance(values, (list, tuple)) or len(values) != num_layers:
        raise ValueError(f"`{name}` must list one integer per layer ({num_layers} layers), got {values!r}.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
            raise ValueError(f"`{name}` entries must be integers in [1, {upper}], got {value!r} in {values!r}.")


def _check_operating_points(points, num_layers: int) -> None:
    """Raise unless `points` is a dict of named sub-networks, each with a per-layer `width` list (or one width) and a
    `depth`, as `transformers-flex search` stores them."""
    if not isinstance(points, dict):
        raise ValueError(f"`operating_points` must be a dict of name -> {{'width', 'depth', ...}}, got {points!r}.")
    for name, point in points.items():
        if not isinstance(point, dict) or not {"width", "depth"} <= point.keys():
            raise ValueError(f"Operating point {name!r} needs a `width` and a `depth`, got {point!r}.")
        widths = point["width"] if isinstance(point["width"], (list, tuple)) else [point["width"]]
        if isinstance(point["width"], (list, tuple)) and len(widths) != num_layers:
            raise ValueError(f"Operating point {name!r} lists {len(widths)} widths for {num_layers} layers.")
        check_multipliers(f"operating_points[{name!r}].width", widths)
        check_multipliers(f"operating_points[{name!r}].depth", [point["depth"]])


class FlexBertConfig(PreTrainedConfig):
    r"""
    Configuration of a FlexBert model: a BERT encoder whose width (attention heads + FFN neurons) and depth can be
    changed at run time, from one set of weights.

    The BERT fields mean what they mean in [`BertConfig`]; a BERT `config.json` loads into this class unchanged.

    Args:
        width_mults (`list[float]`, defaults to `[1.0, 0.75, 0.5, 0.25]`):
            Width multipliers the model is trained and evaluated at. Each is in (0, 1].
        depth_mults (`list[float]`, defaults to `[1.0, 0.75, 0.5]`):
            Depth multipliers the model is trained and evaluated at. Each is in (0, 1].
        depth_rule (`str`, defaults to `"every_other"`):
            Which layers a shallower sub-network keeps: `"every_other"` (DynaBERT: evenly spread layers) or
            `"prefix"` (Flexible BERT: the first layers).
        depth_heads (`str`, defaults to `"final"`):
            What answers a shallower sub-network: `"final"` (the final head, after its last layer) or `"ramps"` (the
            off-ramp after its last layer, Flexible BERT's depth sub-networks; needs the `"prefix"` rule and an
            off-ramp after the last layer of each shallower depth that runs). The full depth is answered by the
            final head, except in an exported shallower sub-network whose answer is an attention ramp: it keeps
            that ramp after its last layer (`off_ramp_layers`).
        exit_layers (`list[int]`, *optional*):
            1-based layer indices followed by an early-exit off-ramp (the last layer's answer is the final head's;
            see `depth_heads`).
        ramp_type (`str`, defaults to `"pooler"`):
            Off-ramp classifier: `"pooler"` (BERT's head: dense + tanh on [CLS], linear) or `"attention"` (FastBERT
            style: project to `ramp_attention_size`, one self-attention layer read at [CLS], dense + tanh, linear).
        ramp_attention_size (`int`, defaults to 128):
            Width of the attention ramp.
        ramp_attention_heads (`int`, defaults to 2):
            Heads of the attention ramp's self-attention.
        exit_criterion (`str`, defaults to `"entropy"`):
            When an off-ramp answers: `"entropy"`, `"normalized_entropy"` (divided by ln C) or `"patience"`.
        exit_threshold (`float`, defaults to 0.0):
            Entropy below which an off-ramp answers (entropy criteria), or the number of agreeing ramps (patience).
        exit_regression_tolerance (`float`, defaults to 0.01):
            Patience on a regression task: two consecutive ramps agree when their outputs differ by less than this
            (an inference setting; `FlexTrainingArguments.gate_regression_tolerance` is the gates' labelling one).
        gate_widths (`list[float]`, *optional*):
            The widths the classes of a width gate stand for; defaults to `width_mults`. Remapping them after
            training moves the whole trade-off curve (e.g. `[0.5, 0.55, 0.55, 0.75]`).
        gate_block_size (`int`, defaults to 0):
            Width gates: 0 for none; `k` puts an in-gate before layer 1 and a gate after every `k`-th layer, each
            picking the width of the next `k` layers (see `gate_pooling` for what they read).
        gate_pooling (`str`, defaults to `"mean"`):
            What a gate after a layer reads: `"mean"` (the mean over real tokens) or `"cls"` (the [CLS] state, as in
            the paper). The in-gate always reads the mean embedding: the [CLS] embedding is the same for every input.
        knowledgeable_layers (`list[int]`, *optional*):
            GEEP's knowledgeable classifier: the final classifier reads a learned softmax-weighted mix of these
            1-based layers' [CLS] states instead of the last layer's alone (layers a shallower sub-network skips
            drop out of the mix).
        dynamic_inference (`bool`, defaults to `False`):
            In eval mode, the heads run the dynamic engine (a call's `dynamic=` overrides it): gates pick widths,
            off-ramps stop early, rows that exit leave the batch. Outputs report each example's exit layer, widths and
            FLOPs.
        layer_num_heads (`list[int]`, *optional*):
            Heads of each layer of an exported (physically smaller) model; `None` means `num_attention_heads` each.
        layer_intermediate_sizes (`list[int]`, *optional*):
            FFN size of each layer of an exported model; `None` means `intermediate_size` each.
        operating_points (`dict[str, dict]`, *optional*):
            Named sub-networks chosen for a budget (`transformers-flex search`): name -> `{"width": [one per layer],
            "depth": ..., "objective", "budget", "cost", "score"}`; `model.set_subnet(budget=name)` selects one.
        exported_subnet (`dict`, *optional*):
            Set by `export_subnet` on the exported model: the `width` and `depth` it was cut at, and the operating
            point's name when it was one.
    """

    model_type = "flexbert"
    # Per-example extras of dynamic inference: the Trainer's evaluation loop keeps only the logits.
    keys_to_ignore_at_inference = ["exit_layers", "layer_widths", "flops"]

    # BERT's own fields, with BERT-base defaults (as in `BertConfig`).
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | int | None = None
    # Flexibility.
    width_mults: list[float | int] | None = None
    depth_mults: list[float | int] | None = None
    depth_rule: str = "every_other"
    depth_heads: str = "final"
    exit_layers: list[int] | None = None
    ramp_type: str = "pooler"
    ramp_attention_size: int = 128
    ramp_attention_heads: int = 2
    exit_criterion: str = "entropy"
    exit_threshold: float | int = 0.0
    exit_regression_tolerance: float | int = 0.01
    gate_widths: list[float | int] | None = None
    gate_block_size: int = 0
    gate_pooling: str = "mean"
    knowledgeable_layers: list[int] | None = None
    dynamic_inference: bool = False
    layer_num_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None
    operating_points: dict | None = None
    exported_subnet: dict | None = None
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        # Mutable defaults are filled here, since dataclass fields may not default to lists.
        if self.width_mults is None:
            self.width_mults = [1.0, 0.75, 0.5, 0.25]
        if self.depth_mults is None:
            self.depth_mults = [1.0, 0.75, 0.5]
        if self.exit_layers is None:
            self.exit_layers = []
        if self.gate_widths is None:
            self.gate_widths = list(self.width_mults)
        if self.auto_map is None:
            self.auto_map = dict(FLEXBERT_AUTO_MAP)
        # A BERT config.json names `model_type: bert`; this class is always `flexbert`.
        kwargs.pop("model_type", None)
        position_embedding_type = kwargs.get("position_embedding_type", "absolute")
        if position_embedding_type != "absolute":
            raise ValueError(
                f"FlexBert supports `position_embedding_type='absolute'` only, got {position_embedding_type!r}."
            )
        if kwargs.get("is_decoder") or kwargs.get("add_cross_attention"):
            raise ValueError("FlexBert is an encoder: `is_decoder` and `add_cross_attention` must be False.")
        super().__post_init__(**kwargs)
        self.check_flex_fields()
        object.__setattr__(self, _CHECKS_ARMED, True)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """`PreTrainedConfig.from_dict`, with overrides of checked fields (e.g. `from_pretrained(path,
        num_hidden_layers=3, exit_layers=[1, 2])`) built into the config together, not assigned one by one: each
        would be checked against the checkpoint's other values and fail, or not, depending on the order."""
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in CHECKED_FIELDS}
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    def __setattr__(self, key, value):
        """Assigning a flexibility field re-runs the checks; an invalid value raises and the old one stays."""
        if key not in CHECKED_FIELDS or not self.__dict__.get(_CHECKS_ARMED, False):
            return super().__setattr__(key, value)
        self.update({key: value})

    def update(self, config_dict: dict) -> None:
        """Set several fields at once, checked together once all are set (fields depend on each other, e.g.
        `num_hidden_layers` and `layer_num_heads`); if the result is invalid, every field keeps its old value."""
        previous = dict(self.__dict__)  # everything, since some fields set others (num_labels sets id2label)
        armed = self.__dict__.get(_CHECKS_ARMED, False)
        object.__setattr__(self, _CHECKS_ARMED, False)  # no check per field: the fields are checked together below
        try:
            super().update(config_dict)
            if armed:
                self.check_flex_fields()
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise
        finally:
            object.__setattr__(self, _CHECKS_ARMED, armed)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`PreTrainedConfig.save_pretrained`, after checking the fields again: in-place edits such as
        `config.gate_widths.append(...)` bypass assignment, and would save a checkpoint that fails to load."""
        self.check_flex_fields()
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop(_CHECKS_ARMED, None)  # a run-time switch, not a setting
        return output

    def check_flex_fields(self) -> None:
        """Raise a `ValueError` naming the field and its allowed values for any invalid flexibility setting."""
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "ramp_attention_size",
            "ramp_attention_heads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        check_multipliers("width_mults", self.width_mults)
        check_multipliers("depth_mults", self.depth_mults)
        check_multipliers("gate_widths", self.gate_widths)
        if self.depth_rule not in DEPTH_RULES:
            raise ValueError(f"`depth_rule` must be one of {DEPTH_RULES}, got {self.depth_rule!r}.")
        if self.depth_heads not in DEPTH_HEADS:
            raise ValueError(f"`depth_heads` must be one of {DEPTH_HEADS}, got {self.depth_heads!r}.")
        if self.depth_heads == "ramps" and (self.depth_rule != "prefix" or self.knowledgeable_layers is not None):
            raise ValueError(
                "`depth_heads='ramps'` needs `depth_rule='prefix'` (a ramp after layer n sees what the first n "
                "layers compute) and no `knowledgeable_layers` (the final head's layer mix)."
            )
        if self.ramp_type not in RAMP_TYPES:
            raise ValueError(f"`ramp_type` must be one of {RAMP_TYPES}, got {self.ramp_type!r}.")
        if self.ramp_attention_size % self.ramp_attention_heads != 0:
            raise ValueError(
                f"`ramp_attention_size` ({self.ramp_attention_size}) must be a multiple of `ramp_attention_heads` "
                f"({self.ramp_attention_heads})."
            )
        if self.gate_pooling not in GATE_POOLINGS:
            raise ValueError(f"`gate_pooling` must be one of {GATE_POOLINGS}, got {self.gate_pooling!r}.")
        if self.exit_criterion not in EXIT_CRITERIA:
            raise ValueError(f"`exit_criterion` must be one of {EXIT_CRITERIA}, got {self.exit_criterion!r}.")
        _check_number("exit_threshold", self.exit_threshold)
        _check_number("exit_regression_tolerance", self.exit_regression_tolerance)
        if (
            isinstance(self.gate_block_size, bool)
            or not isinstance(self.gate_block_size, int)
            or not 0 <= self.gate_block_size <= self.num_hidden_layers
        ):
            raise ValueError(
                f"`gate_block_size` must be an integer in [0, {self.num_hidden_layers}] (0: no gates), "
                f"got {self.gate_block_size!r}."
            )
        _check_layer_list("exit_layers", self.exit_layers, self.num_hidden_layers)
        if self.knowledgeable_layers is not None:
            _check_layer_list("knowledgeable_layers", self.knowledgeable_layers, self.num_hidden_layers)
            if len(self.knowledgeable_layers) == 0:
                raise ValueError("`knowledgeable_layers` must be None or a non-empty list of layers.")
        _check_per_layer_sizes(
            "layer_num_heads", self.layer_num_heads, self.num_hidden_layers, self.num_attention_heads
        )
        _check_per_layer_sizes(
            "layer_intermediate_sizes", self.layer_intermediate_sizes, self.num_hidden_layers, self.intermediate_size
        )
        if self.operating_points is not None:
            _check_operating_points(self.operating_points, self.num_hidden_layers)

    @property
    def gate_layers(self) -> list[int]:
        """Layers whose output a width gate reads (0: the embeddings' in-gate); each picks the next block's width."""
        if self.gate_block_size == 0:
            return []
        return list(range(0, self.num_hidden_layers, self.gate_block_size))

    @property
    def off_ramp_layers(self) -> list[int]:
        """Exit layers with an off-ramp module: all but the last layer, whose answer is the final head's; only an
        exported sub-network answered by its attention ramp (`depth_heads="ramps"`) keeps a ramp there."""
        keeps_last = self.depth_heads == "ramps" and self.exported_subnet is not None
        return [layer for layer in self.exit_layers if layer < self.num_hidden_layers or keeps_last]

    @property
    def head_size(self) -> int:
        """Size of one attention head; it never changes with the width."""
        return self.hidden_size // self.num_attention_heads

    def num_heads_of_layer(self, layer: int) -> int:
        """Heads layer `layer` physically has (fewer than `num_attention_heads` in an exported model)."""
        return self.num_attention_heads if self.layer_num_heads is None else self.layer_num_heads[layer]

    def intermediate_size_of_layer(self, layer: int) -> int:
        """FFN neurons layer `layer` physically has (fewer than `intermediate_size` in an exported model)."""
        return (
            self.intermediate_size if self.layer_intermediate_sizes is None else self.layer_intermediate_sizes[layer]
        )


__all__ = ["FlexBertConfig"]
