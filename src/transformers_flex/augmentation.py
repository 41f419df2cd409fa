"""Data augmentation for the distillation stages (TinyBERT's, docs/algorithms.md §4): copies of every training
example with some whole words replaced by their nearest neighbours in the backbone's input embeddings.

TinyBERT replaces single-piece words by BERT's masked-LM guesses and multi-piece words by GloVe neighbours; a
sentence-embedding backbone such as all-MiniLM-L6-v2 has no masked-LM head, so here every replacement comes from
the backbone's own word embeddings (cosine similarity). The stages that learn from a teacher's outputs (`width`,
`width_depth`) need no label for a new sentence, so the copies keep their example's label only to keep the dataset's
layout; the stages that learn gold labels never see them. Works on token ids, so every text column (pairs included)
is augmented alike, and the attention mask and segment ids stay as they are.
"""

from __future__ import annotations  # `datasets` is imported where data is built

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from datasets import Dataset

CONTINUATION_PREFIX = "##"  # WordPiece marks the pieces after a word's first one


def replaceable_token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids of the vocabulary's whole alphabetic words (no special token, no `##` piece): what may be replaced, and
    what replaces."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor(
        sorted(
            token_id
            for token, token_id in tokenizer.get_vocab().items()
            if token.isalpha() and token_id not in special and not token.startswith(CONTINUATION_PREFIX)
        )
    )


def embedding_neighbours(
    embeddings: torch.Tensor, candidate_ids: torch.Tensor, num_neighbours: int, chunk_size: int = 2048
) -> dict[int, list[int]]:
    """`{token id: its num_neighbours nearest other candidates}` by cosine similarity of the `(vocab, hidden)` input
    embeddings, among `candidate_ids` (computed in chunks of rows, so memory stays at chunk x candidates)."""
    vectors = torch.nn.functional.normalize(embeddings[candidate_ids].float(), dim=-1)
    neighbours = {}
    for start in range(0, len(candidate_ids), chunk_size):
        similarity = vectors[start : start + chunk_size] @ vectors.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -float("inf")  # a word is not its own neighbour
        nearest = similarity.topk(num_neighbours, dim=-1).indices
        for row, token_id in enumerate(candidate_ids[start : start + chunk_size].tolist()):
            neighbours[token_id] = candidate_ids[nearest[row]].tolist()
    return neighbours


def augment_ids(
    input_ids: list[int],
    neighbours: dict[int, list[int]],
    continuation_ids: set[int],
    probability: float,
    generator: torch.Generator,
) -> list[int]:
    """One augmented copy of a tokenized example: every whole word (a token with neighbours, not followed by a `##`
    piece of the same word) replaced, with `probability`, by one of its neighbours drawn uniformly."""
    augmented = list(input_ids)
    draws = torch.rand(len(input_ids), generator=generator).tolist()
    picks = torch.randint(0, 1 << 30, (len(input_ids),), generator=generator).tolist()
    for position, token_id in enumerate(input_ids):
        followed_by_piece = position + 1 < len(input_ids) and input_ids[position + 1] in continuation_ids
        if token_id in neighbours and not followed_by_piece and draws[position] < probability:
            options = neighbours[token_id]
            augmented[position] = options[picks[position] % len(options)]
    return augmented


def augment_dataset(
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    embeddings: torch.Tensor,
    copies: int,
    probability: float = 0.4,
    num_neighbours: int = 15,
    seed: int = 42,
) -> Dataset:
    """The tokenized `train` followed by `copies` augmented copies of each of its examples (copy c of example i is
    row `(c + 1) * len(train) + i`); the same arguments give the same rows. Defaults: TinyBERT's p = 0.4, K = 15."""
    from datasets import concatenate_datasets

    if copies < 1:
        return train
    neighbours = embedding_neighbours(embeddings, replaceable_token_ids(tokenizer), num_neighbours)
    continuation_ids = {
        token_id for token, token_id in tokenizer.get_vocab().items() if token.startswith(CONTINUATION_PREFIX)
    }
    generator = torch.Generator().manual_seed(seed)
    originals = train["input_ids"]
    augmented = []
    for _ in range(copies):
        ids = [augment_ids(row, neighbours, continuation_ids, probability, generator) for row in originals]
        copy = train.remove_columns("input_ids").add_column("input_ids", ids)  # in memory, never cached on disk
        augmented.append(copy.cast_column("input_ids", train.features["input_ids"]))  # the original's int type
    return concatenate_datasets([train, *augmented])


__all__ = ["augment_dataset", "augment_ids", "embedding_neighbours", "replaceable_token_ids"]
