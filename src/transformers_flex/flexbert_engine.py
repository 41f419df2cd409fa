"""The batched dynamic engine every FlexBert head shares (docs/algorithms.md §5-9).

Per example: width gates pick the width of each block of layers, off-ramps answer early, and rows that answer leave
the batch (compaction), so the rows that go on run as a smaller dense batch with trailing padding trimmed. One step,
`FlexBertDynamicMixin.run_layer_for_rows`, runs one layer for a group of rows at their widths and counts their FLOPs;
one loop, `dynamic_forward`, drives it. A head supplies what only it knows: which layers can answer, its answer at a
layer, how sure that answer is, and how answers are stored and returned.

Part of the portable unit copied into every checkpoint: imports only torch/transformers and flat siblings.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .configuration_flexbert import EXIT_CRITERIA, check_multipliers
from .flexbert_layers import (
    FlexBertLayer,
    Subnet,
    Width,
    additive_attention_mask,
    cls_head_macs,
    last_real_column,
    layer_macs,
)


def prediction_entropy(logits: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Entropy (natural log) of each row's softmax; divided by ln(classes) when `normalized` (FastBERT)."""
    log_probs = logits.float().log_softmax(dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return entropy / math.log(logits.shape[-1]) if normalized else entropy


@dataclass
class RunningRows:
    """The rows of a batch still running in the engine, and what it tracks for each of them (all indexed alike).

    Args:
        rows: Original batch index of each running row.
        hidden: Their hidden states, trimmed to the longest running row.
        mask: Their 1/0 attention mask, trimmed alike.
        widths: The width the last gate picked for each row (None before any gate).
        previous: Patience: each row's prediction at the last off-ramp (None before the first).
        streak: Patience: how many consecutive off-ramps agreed.
        answered: When rows wait for the whole batch (`exit_together`): which already have their answer.
        cls_states: [CLS] states of the layers the final answer reads (`{1-based layer: (rows, hidden)}`).
    """

    rows: torch.Tensor
    hidden: torch.Tensor
    mask: torch.Tensor
    widths: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    streak: torch.Tensor | None = None
    answered: torch.Tensor | None = None
    cls_states: dict[int, torch.Tensor] = field(default_factory=dict)

    def take(self, index: torch.Tensor) -> "RunningRows":
        """The running rows at `index` (a permutation, or a boolean selection), every tracked tensor alike."""

        def pick(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values[index]

        return RunningRows(
            rows=self.rows[index],
            hidden=self.hidden[index],
            mask=self.mask[index],
            widths=pick(self.widths),
            previous=pick(self.previous),
            streak=pick(self.streak),
            answered=pick(self.answered),
            cls_states={layer: states[index] for layer, states in self.cls_states.items()},
        )


class FlexBertDynamicMixin:
    """Batched per-example inference for a FlexBert head with `self.bert` (a `FlexBertModel`), `self.config`,
    `self.width_gates` (a `ModuleDict`, possibly empty) and `self.resolve_subnet`.

    A head implements the hooks below that raise `NotImplementedError`; `dynamic_forward` does the rest.
    """

    # --- hooks a head implements ------------------------------------------------------------------------------

    def answer_layers(self, active_layers: list[int]) -> list[int]:
        """1-based layers below the last active one whose off-ramp can answer."""
        raise NotImplementedError

    def layer_answer(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, cls_states: dict[int, torch.Tensor], last: bool
    ) -> torch.Tensor:
        """The answer of these rows after 1-based `layer`: the off-ramp's, or the final head's when `last`."""
        raise NotImplementedError

    def answer_macs(self, layer: int, lengths: torch.Tensor, last: bool) -> torch.Tensor:
        """Multiply-accumulates per row of `layer_answer` for rows of the given real lengths."""
        raise NotImplementedError

    def answer_uncertainty(self, answer: torch.Tensor, criterion: str, mask: torch.Tensor) -> torch.Tensor:
        """(rows,) how unsure each answer is under an entropy criterion (`mask`: the rows' 1/0 attention mask): a row
        exits below the threshold."""
        raise NotImplementedError

    def predictions_agree(
        self, previous: torch.Tensor | None, answer: torch.Tensor, regression_tolerance: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patience: (this answer's prediction per row, whether it agrees with the `previous` prediction; None when
        there is none). Regression outputs agree when they differ by less than `regression_tolerance`."""
        raise NotImplementedError

    def empty_answers(self, batch_size: int, seq_length: int, device: torch.device) -> torch.Tensor:
        """Storage for every row's answer, filled in as rows answer."""
        raise NotImplementedError

    def store_answers(self, answers: torch.Tensor, rows: torch.Tensor, answer: torch.Tensor) -> None:
        """Write `answer` (rows trimmed to the running length) into `answers` at the original `rows`."""
        raise NotImplementedError

    def dynamic_output(self, answers, exit_layers, layer_widths, flops, labels):
        """The head's output object of `dynamic_forward`."""
        raise NotImplementedError

    def cls_state_layers(self) -> Sequence[int]:
        """1-based layers whose [CLS] state the final answer reads besides the last layer's (none by default)."""
        return ()

    def depth_head(self, layers_run: int) -> str | None:
        """The off-ramp (its name in `off_ramps`) that answers a sub-network running the first `layers_run` layers:
        with `config.depth_heads="ramps"`, the one after its last layer; None when the final head answers
        (`depth_heads="final"`, or the full depth without an off-ramp after the last layer; an exported shallower
        sub-network keeps its attention ramp there)."""
        if self.config.depth_heads != "ramps":
            return None
        if layers_run == self.config.num_hidden_layers:
            return str(layers_run) if str(layers_run) in self.off_ramps else None
        if str(layers_run) not in self.off_ramps:
            raise ValueError(
                f"`depth_heads='ramps'`: a sub-network of {layers_run} layers is answered by the off-ramp after layer "
                f"{layers_run}, and the model has none (`exit_layers` is {self.config.exit_layers})."
            )
        return str(layers_run)

    def static_depth_head(self, width=None, depth=None) -> str | None:
        """`depth_head` of the static forward's sub-network (`resolve_subnet(width, depth)`); it is resolved and its
        layers counted only under `depth_heads="ramps"` (every static forward asks: the default costs one
        comparison)."""
        if self.config.depth_heads != "ramps":
            return None
        return self.depth_head(len(self.bert.encoder.kept_layers(self.resolve_subnet(width, depth))))

    def check_exit_settings(self, criterion: str, use_ramps: bool) -> None:
        """Raise when the head cannot exit under `criterion` (e.g. entropy on a regression output)."""
        if criterion not in EXIT_CRITERIA:
            raise ValueError(f"`criterion` must be one of {EXIT_CRITERIA}, got {criterion!r}.")

    # --- the engine ---------------------------------------------------------------------------------------------

    def run_layer_for_rows(
        self, layer: FlexBertLayer, hidden: torch.Tensor, mask: torch.Tensor, widths: torch.Tensor, lengths
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's step: one layer with every row at its own width, and each row's FLOPs.

        Each run of consecutive rows sharing a width (one run per width when `widths` is sorted) runs as one dense
        batch, trimmed to its longest row. With one width the layer's output is a new tensor; with several, each
        run's output is written back into `hidden` in place (no gather or scatter), so callers must not keep views of
        `hidden`. FLOPs are counted at each row's real length (`lengths`)."""
        config = self.config
        block_widths, block_sizes = torch.unique_consecutive(widths, return_counts=True)
        if len(block_widths) == 1:  # the common case: one width for all rows
            width = float(block_widths[0])
            output, _ = layer(hidden, additive_attention_mask(mask, hidden.dtype), width)
            heads, neurons = layer.shape_at(width)
            return output, 2 * layer_macs(config.hidden_size, config.head_size, heads, neurons, lengths.double())
        flops = torch.zeros(len(widths), dtype=torch.float64, device=hidden.device)
        start = 0
        for width, size in zip(block_widths.tolist(), block_sizes.tolist()):
            block = slice(start, start + size)
            longest = last_real_column(mask[block])
            block_mask = additive_attention_mask(mask[block, :longest], hidden.dtype)
            # The block's padding columns past `longest` keep their old (finite, never attended) states.
            hidden[block, :longest], _ = layer(hidden[block, :longest], block_mask, width)
            heads, neurons = layer.shape_at(width)
            block_lengths = lengths[block].double()
            flops[block] = 2 * layer_macs(config.hidden_size, config.head_size, heads, neurons, block_lengths)
            start += size
        return hidden, flops

    def _check_dynamic_settings(
        self, criterion: str, use_gates: bool, use_ramps: bool, subnet: Subnet, gate_widths: list[float]
    ) -> None:
        self.check_exit_settings(criterion, use_ramps)
        if not use_gates or not len(self.width_gates):
            return
        check_multipliers("gate_widths", gate_widths)
        if subnet.depth != 1.0:
            raise ValueError(
                "Width gates are trained at full depth: use them with `depth=1.0`, or pass `use_gates=False`."
            )
        for gate in self.width_gates.values():
            if gate.classifier.out_features != len(gate_widths):
                raise ValueError(
                    f"The width gates have {gate.classifier.out_features} classes but `gate_widths` lists "
                    f"{len(gate_widths)} widths: remap them with a list of the same length."
                )

    @staticmethod
    def _check_planned_exits(exit_at: torch.Tensor, answering: set[int]) -> None:
        unknown = set(exit_at.tolist()) - answering
        if unknown:
            raise ValueError(
                f"Planned exit layers {sorted(unknown)} have no classifier; layers that answer: {sorted(answering)}."
            )

    def _asked_rows(
        self, run: RunningRows, layer: int, last: bool, exit_at: torch.Tensor | None
    ) -> slice | torch.Tensor:
        """Which running rows answer (or may answer) at `layer`: `slice(None)` for all of them (the common case:
        views, no copies of the hidden states), else their positions among the running rows."""
        if exit_at is not None and not last:
            asked = exit_at[run.rows] == layer  # planned exits: only the rows planned here
        elif run.answered is not None:
            asked = ~run.answered  # waiting for the whole batch: rows that have no answer yet
        else:
            return slice(None)
        return slice(None) if bool(asked.all()) else asked.nonzero().squeeze(1)

    def _exits(
        self,
        run: RunningRows,
        asked: slice | torch.Tensor,
        answer: torch.Tensor,
        criterion: str,
        threshold: float,
        regression_tolerance: float,
    ) -> torch.Tensor:
        """Which of the asked rows leave with `answer` at an off-ramp, by the exit criterion."""
        if criterion != "patience":
            return self.answer_uncertainty(answer, criterion, run.mask[asked]) < threshold
        if run.previous is None:  # the first off-ramp: nothing to agree with yet (every row is asked)
            run.previous, _ = self.predictions_agree(None, answer, regression_tolerance)
            run.streak = torch.zeros(len(run.rows), dtype=torch.long, device=answer.device)
        else:
            prediction, agrees = self.predictions_agree(run.previous[asked], answer, regression_tolerance)
            run.streak[asked] = torch.where(agrees, run.streak[asked] + 1, torch.zeros_like(run.streak[asked]))
            run.previous[asked] = prediction
        return run.streak[asked] >= threshold

    @staticmethod
    def _whole_groups(groups: torch.Tensor, leaving: torch.Tensor) -> torch.Tensor:
        """`leaving`, kept only for rows whose every running group-mate (same value in `groups`) leaves too."""
        _, group_index = torch.unique(groups, return_inverse=True)  # group ids as 0..n-1
        staying = torch.zeros(int(group_index.max()) + 1, dtype=torch.bool, device=leaving.device)
        staying[group_index[~leaving]] = True
        return leaving & ~staying[group_index]

    @torch.no_grad()
    def dynamic_forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        criterion: str | None = None,
        threshold: float | None = None,
        use_gates: bool = True,
        use_ramps: bool = True,
        width: Width | None = None,
        depth: float | None = None,
        gate_widths: Sequence[float] | None = None,
        exit_at: torch.Tensor | None = None,
        exit_together: bool = False,
        regression_tolerance: float | None = None,
        exit_groups: torch.Tensor | None = None,
    ):
        """Per-example inference on a batch: width gates pick each block's width, off-ramps answer early.

        After every layer with an off-ramp, rows whose answer satisfies the exit criterion (`criterion`/`threshold`,
        by default the config's) answer and leave; the rest continue as a smaller dense batch with trailing padding
        trimmed. Rows that gates sent to different widths run a layer as one dense group per width.

        Args:
            criterion, threshold: Exit criterion (`entropy`, `normalized_entropy`, `patience`) and its threshold.
            use_gates: Let the width gates pick widths (they override the sub-network's width and need full depth).
            use_ramps: Let off-ramps answer; without, every row runs to the last active layer.
            width, depth: This call's sub-network (the active one when both are None; a missing one is 1.0).
            gate_widths: The widths the gates' classes stand for in this call (default: `config.gate_widths`).
            exit_at: `(batch,)` planned 1-based exit layer of each row (GEEP): a row answers exactly there, and only
                that layer's classifier runs for it. Overrides the exit criterion.
            exit_together: Rows that may exit keep their answer but stay in the batch until every row may (the
                batched behaviour of DeeBERT/PABEE implementations): same answers, no compaction.
            regression_tolerance: Patience on a regression output: consecutive off-ramps agree when they differ by
                less than this (default: `config.exit_regression_tolerance`).
            exit_groups: `(batch,)` integer group of each row (extractive QA: the question of each window): the rows
                of a group leave together, at the first off-ramp where every one of them meets the exit criterion,
                so that all of them answer from the same classifier.

        Every example gets the answer, exit layer and widths it would get alone (with `exit_groups`: every group
        gets what it would get alone).
        """
        config, encoder = self.config, self.bert.encoder
        subnet = self.resolve_subnet(width, depth)
        criterion = config.exit_criterion if criterion is None else criterion
        threshold = config.exit_threshold if threshold is None else threshold
        if regression_tolerance is None:
            regression_tolerance = config.exit_regression_tolerance
        gate_widths = list(config.gate_widths if gate_widths is None else gate_widths)
        self._check_dynamic_settings(criterion, use_gates, use_ramps, subnet, gate_widths)
        if exit_groups is not None and exit_at is not None:
            raise ValueError("Planned exits (`exit_at`) already fix each row's layer: drop `exit_groups`.")
        hidden = self.bert.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        (batch_size, seq_length), device = hidden.shape[:2], hidden.device
        mask = torch.ones((batch_size, seq_length), dtype=torch.long, device=device)
        mask = mask if attention_mask is None else attention_mask
        lengths = mask.sum(dim=1)
        active = encoder.kept_layers(subnet)
        answering = set(self.answer_layers(active)) if use_ramps or exit_at is not None else set()
        if exit_at is not None:
            self._check_planned_exits(exit_at, answering | {active[-1] + 1})
            answering = set(exit_at.tolist()) - {active[-1] + 1}  # planned exits: only the planned layers answer
        gates = self.width_gates if use_gates else {}
        gate_values = torch.tensor(gate_widths, dtype=torch.float64, device=device)
        gate_flops = 2 * cls_head_macs(config.hidden_size, len(gate_widths))
        static_widths = subnet.layer_widths(config.num_hidden_layers)
        kept_states = set(self.cls_state_layers())
        answers = self.empty_answers(batch_size, seq_length, device)
        exit_layers = torch.zeros(batch_size, dtype=torch.long, device=device)
        layer_widths = torch.zeros(batch_size, config.num_hidden_layers, device=device)
        flops = torch.zeros(batch_size, dtype=torch.float64, device=device)
        run = RunningRows(rows=torch.arange(batch_size, device=device), hidden=hidden, mask=mask)
        if exit_together:
            run.answered = torch.zeros(batch_size, dtype=torch.bool, device=device)
        for index in active:
            layer, last = index + 1, index == active[-1]
            # Trailing columns that are padding for every running row are dropped (length bucketing on the fly).
            longest = last_real_column(run.mask)
            run.hidden, run.mask = run.hidden[:, :longest], run.mask[:, :longest]
            if str(index) in gates:
                gate = gates[str(index)]
                run.widths = gate_values[gate(gate.pool(run.hidden, run.mask)).argmax(dim=-1)]
                flops[run.rows] += gate_flops
                run = run.take(run.widths.argsort(stable=True))  # each width's rows one block until the next gate
            widths = run.widths
            if widths is None:
                widths = torch.full((len(run.rows),), static_widths[index], dtype=torch.float64, device=device)
            run.hidden, spent = self.run_layer_for_rows(
                encoder.layer[index], run.hidden, run.mask, widths, lengths[run.rows]
            )
            flops[run.rows] += spent
            layer_widths[run.rows, index] = widths.float()
            if layer in kept_states:
                run.cls_states[layer] = run.hidden[:, 0].clone()  # later width blocks write into `hidden` in place
            if not last and layer not in answering:
                continue
            asked = self._asked_rows(run, layer, last, exit_at)
            if isinstance(asked, torch.Tensor) and asked.numel() == 0:
                continue
            asked_states = {number: states[asked] for number, states in run.cls_states.items()}
            answer = self.layer_answer(layer, run.hidden[asked], run.mask[asked], asked_states, last)
            flops[run.rows[asked]] += 2 * self.answer_macs(layer, lengths[run.rows[asked]].double(), last)
            if last or exit_at is not None:
                leaving = torch.ones(len(answer), dtype=torch.bool, device=device)
            else:
                leaving = self._exits(run, asked, answer, criterion, threshold, regression_tolerance)
                if exit_groups is not None:
                    leaving = self._whole_groups(exit_groups[run.rows[asked]], leaving)
            if not bool(leaving.any()):
                continue  # nobody leaves: no copies
            # Positions among the running rows of the rows that leave.
            finished = leaving.nonzero().squeeze(1) if isinstance(asked, slice) else asked[leaving]
            self.store_answers(answers, run.rows[finished], answer[leaving])
            exit_layers[run.rows[finished]] = layer
            if last:
                break
            if run.answered is not None:
                run.answered[finished] = True
                if bool(run.answered.all()):
                    break
                continue
            # Compaction: only the rows that go on run the next layers, as a smaller dense batch.
            going_on = torch.ones(len(run.rows), dtype=torch.bool, device=device)
            going_on[finished] = False
            run = run.take(going_on)
            if run.rows.numel() == 0:
                break
        return self.dynamic_output(answers, exit_layers, layer_widths, flops, labels)


__all__ = ["FlexBertDynamicMixin", "RunningRows", "prediction_entropy"]
