"""Loss functions of flexible-model training (docs/algorithms.md §4-6), as small pure functions.

Shapes: logits (batch, classes); hidden states (batch, length, hidden); attention probabilities (batch, heads,
length, length); attention_mask (batch, length) of 1/0.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """`-sum softmax(teacher) * log_softmax(student)` over classes, averaged over the batch."""
    teacher_probs = teacher_logits.float().softmax(dim=-1)
    return -(teacher_probs * student_logits.float().log_softmax(dim=-1)).sum(dim=-1).mean()


def logits_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, regression: bool) -> torch.Tensor:
    """Soft cross-entropy for classification; MSE on the logits for regression (STS-B)."""
    if regression:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    return soft_cross_entropy(student_logits, teacher_logits)


def masked_hidden_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE over the real (unpadded) tokens of each example, then averaged over examples.

    Averaging per example first makes the loss independent of how a batch is split or padded, so gradient
    accumulation gives the same update as one large batch.
    """
    per_token = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # (batch, length)
    return mean_over_real_tokens(per_token, attention_mask)


def mean_over_real_tokens(per_token: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A `(batch, length)` loss averaged over each example's real tokens, then over examples."""
    mask = attention_mask.to(per_token.dtype)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def teacher_layer_for_student(student_layers: list[int], num_teacher_layers: int) -> list[int]:
    """Teacher hidden-state index each student hidden state imitates (0 = embeddings).

    Student hidden state j > 0 comes from layer `student_layers[j-1]` (0-based) and imitates the teacher's output of
    that layer; the student's last hidden state always imitates the teacher's last (docs/algorithms.md §2). With
    the every_other rule, `student_layers` is `[floor(i/d)]` and this is DynaBERT's `kept` map; with the prefix rule
    it is the first n layers, each imitating the same layer of the teacher.
    """
    mapping = [0] + [layer + 1 for layer in student_layers]
    mapping[-1] = num_teacher_layers
    return mapping


def hidden_states_distillation(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    student_layers: list[int],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """`sum_j MSE(h_s[j], h_t[kept[j]])` over the student's embedding output and every layer it ran."""
    mapping = teacher_layer_for_student(student_layers, len(teacher_hidden) - 1)
    return sum(
        masked_hidden_mse(student_state, teacher_hidden[teacher_index], attention_mask)
        for student_state, teacher_index in zip(student_hidden, mapping)
    )


def masked_attention_kl(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`KL(teacher || student)` between the attention distributions of each head at each real query token, averaged
    over heads and real tokens of each example, then over examples (MiniLM's self-attention transfer).

    The student's heads are the teacher's first ones (a narrower width keeps a prefix of the rewired heads), so the
    teacher is cut to the student's head count. Padded keys have probability 0 in both and add nothing.
    """
    teacher = teacher[:, : student.shape[1]].float()
    student_log = student.float().clamp_min(torch.finfo(torch.float32).tiny).log()  # 0 * log 0 must stay 0
    per_query = (torch.xlogy(teacher, teacher) - teacher * student_log).sum(dim=-1).mean(dim=1)  # (batch, length)
    return mean_over_real_tokens(per_query, attention_mask)


def attention_distillation(
    student_attentions: tuple[torch.Tensor, ...],
    teacher_attentions: tuple[torch.Tensor, ...],
    student_layers: list[int],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """`sum_j KL(A_t[layer_j] || A_s[j])` over the layers the student ran, each against the teacher's same layer
    (the student runs the teacher's own layer `layer_j`, 0-based, at its width)."""
    return sum(
        masked_attention_kl(student, teacher_attentions[layer], attention_mask)
        for student, layer in zip(student_attentions, student_layers)
    )


# --- off-ramp training (docs/algorithms.md §5) -----------------------------------------------------------------


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """`KL(p_teacher || p_student)`, summed over classes and averaged over the batch."""
    teacher_log_probs = teacher_logits.float().log_softmax(dim=-1)
    student_log_probs = student_logits.float().log_softmax(dim=-1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1).mean()


def layer_weighted_loss(losses_by_layer: dict[int, torch.Tensor]) -> torch.Tensor:
    """PABEE's joint loss `sum_i i * L_i / sum_i i`, weighting each classifier's loss by its (1-based) layer."""
    return sum(layer * loss for layer, loss in losses_by_layer.items()) / sum(losses_by_layer)


def ramp_training_loss(
    mode: str,
    ramps: dict[int, torch.Tensor],
    final_logits: torch.Tensor,
    labels: torch.Tensor,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_layers: int,
) -> torch.Tensor:
    """The loss of one ramp-training mode, from every ramp's and the final classifier's logits.

    `task_loss(logits, labels)` is the model's own loss (cross-entropy, or MSE for regression); for regression the
    imitation terms are MSE to the final output instead of KL.
    """
    regression = final_logits.shape[-1] == 1

    def imitation(logits, teacher):
        return F.mse_loss(logits.float(), teacher.float()) if regression else kl_to_teacher(logits, teacher)

    if mode == "two_stage":
        return sum(task_loss(logits, labels) for logits in ramps.values())
    if mode == "weighted":
        by_layer = {layer: task_loss(logits, labels) for layer, logits in ramps.items()}
        return layer_weighted_loss(by_layer | {num_layers: task_loss(final_logits, labels)})
    distill = sum(imitation(logits, final_logits.detach()) for logits in ramps.values())
    if mode == "self_distill":
        return distill
    return task_loss(final_logits, labels) + distill  # shared_exit


# --- width gates (docs/algorithms.md §6) --------------------------------------------------------------------------


def prediction_is_correct(logits: torch.Tensor, labels: torch.Tensor, regression_tolerance: float) -> torch.Tensor:
    """(batch,) whether each prediction is right: argmax == label, or for regression |output - label| <= tolerance."""
    if logits.shape[-1] == 1:
        return (logits[:, 0].float() - labels.float()).abs() <= regression_tolerance
    return logits.argmax(dim=-1) == labels


def span_is_correct(logits: torch.Tensor, positions: torch.Tensor, min_f1: float) -> torch.Tensor:
    """(batch,) whether each QA window's predicted span is right: the span from its argmax start to its argmax end
    has a token-overlap F1 of at least `min_f1` with the gold span (`logits` `(batch, 2, length)`, `positions`
    `(batch, 2)`). A window whose answer lies elsewhere has the CLS position as gold, so it is right when it points
    there too. A span that ends before it starts is wrong."""
    predicted = logits.argmax(dim=-1)  # (batch, 2)
    start, end = predicted[:, 0], predicted[:, 1]
    gold_start, gold_end = positions[:, 0], positions[:, 1]
    overlap = (torch.minimum(end, gold_end) - torch.maximum(start, gold_start) + 1).clamp(min=0).float()
    precision = overlap / (end - start + 1).clamp(min=1).float()
    recall = overlap / (gold_end - gold_start + 1).clamp(min=1).float()
    f1 = torch.where(overlap > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-9), 0.0)
    return (f1 >= min_f1) & (end >= start)


def gate_labels(correct: torch.Tensor, widths: list[float]) -> torch.Tensor:
    """Each example's gate class: the smallest width whose prediction is correct, else the largest width.

    `correct` is (len(widths), batch): row k says which examples the model gets right at uniform width `widths[k]`.
    """
    by_size = sorted(range(len(widths)), key=lambda k: widths[k])  # class indices from the smallest width up
    label = torch.full((correct.shape[1],), by_size[-1], dtype=torch.long, device=correct.device)
    for k in reversed(by_size):  # the smallest correct width is written last, so it wins
        label = torch.where(correct[k], k, label)
    return label


def gate_class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Class weights inverse to label frequency, `total / (classes * count)` (1 for balanced labels)."""
    return counts.sum() / (len(counts) * counts.clamp(min=1))


def gate_loss(
    gate_logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NLL of a Gumbel-softmax sample of every gate against the example's width class (docs/algorithms.md §6).

    `gate_logits` is (batch, gates, classes); every gate of an example shares its label. The sample is the soft
    one: a hard straight-through one-hot is 0 at every wrong class, where its log (the NLL) is undefined. The loss
    is the class-weighted per-example mean, so gradient accumulation over equal micro-batches gives the same update.
    """
    sample = F.gumbel_softmax(gate_logits.float(), tau=temperature, hard=False, dim=-1)
    log_sample = sample.clamp(min=1e-9).log()
    chosen = log_sample.gather(-1, labels[:, None, None].expand(-1, gate_logits.shape[1], 1)).squeeze(-1)
    return -(class_weights[labels][:, None] * chosen).mean()


__all__ = [
    "gate_class_weights",
    "gate_labels",
    "gate_loss",
    "hidden_states_distillation",
    "kl_to_teacher",
    "layer_weighted_loss",
    "logits_distillation",
    "masked_hidden_mse",
    "prediction_is_correct",
    "span_is_correct",
    "ramp_training_loss",
    "soft_cross_entropy",
    "teacher_layer_for_student",
]
