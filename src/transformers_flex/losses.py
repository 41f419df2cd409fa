"""Loss functions of flexible-model training (ALGORITHMS.md §4), as small pure functions.

Shapes: logits (batch, classes); hidden states (batch, length, hidden); attention_mask (batch, length) of 1/0.
"""

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
    mask = attention_mask.to(student.dtype)
    per_token = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # (batch, length)
    per_example = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_example.mean()


def teacher_layer_for_student(student_layers: list[int], num_teacher_layers: int) -> list[int]:
    """Teacher hidden-state index each student hidden state imitates (0 = embeddings).

    Student hidden state j > 0 comes from layer `student_layers[j-1]` (0-based) and imitates the teacher's output of
    that layer; the student's last hidden state always imitates the teacher's last (ALGORITHMS.md §2).
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


__all__ = [
    "hidden_states_distillation",
    "logits_distillation",
    "masked_hidden_mse",
    "soft_cross_entropy",
    "teacher_layer_for_student",
]
