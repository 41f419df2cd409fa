"""TinyBERT-style data augmentation for the distillation stages (transformers_flex.augmentation): embedding
neighbours, which tokens a copy replaces, the augmented dataset, and `transformers-flex train --augment_copies`."""

import json

import pytest
import torch
from datasets import Dataset
from pipeline_runs import TINY_BUDGET, csv_arguments, train_here
from transformers import AutoTokenizer

from transformers_flex.augmentation import augment_dataset, augment_ids, embedding_neighbours, replaceable_token_ids

SENTENCES = ["the film was quickly forgotten by everyone", "unbelievably dull"]


@pytest.fixture(scope="module")
def tokenizer(backbone_path):
    return AutoTokenizer.from_pretrained(backbone_path)


def test_neighbours_are_the_nearest_other_candidates_by_cosine():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(40, 8, generator=generator)
    candidates = torch.tensor([1, 3, 4, 9, 10, 17, 22, 23, 30, 31, 38])
    neighbours = embedding_neighbours(embeddings, candidates, num_neighbours=3, chunk_size=4)  # several chunks
    vectors = torch.nn.functional.normalize(embeddings[candidates], dim=-1)
    for row, token_id in enumerate(candidates.tolist()):
        similarity = vectors @ vectors[row]
        similarity[row] = -2.0  # never itself
        assert neighbours[token_id] == candidates[similarity.topk(3).indices].tolist()


def test_a_copy_replaces_whole_words_only_each_by_one_of_its_neighbours(tokenizer):
    ids = tokenizer(*SENTENCES)["input_ids"]
    neighbours = {token_id: [token_id + 1, token_id + 2] for token_id in replaceable_token_ids(tokenizer).tolist()}
    continuation = {i for token, i in tokenizer.get_vocab().items() if token.startswith("##")}
    copy = augment_ids(ids, neighbours, continuation, probability=1.0, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    for position, (old, new) in enumerate(zip(ids, copy)):
        whole_word = tokens[position].isalpha() and old not in tokenizer.all_special_ids
        split_word = position + 1 < len(ids) and tokens[position + 1].startswith("##")  # "un" of "unbelievably"
        if whole_word and not split_word:
            assert new in neighbours[old]
        else:
            assert new == old, tokens[position]
    assert copy != ids and len(copy) == len(ids)


def test_augmented_dataset_keeps_the_originals_and_every_other_column(tokenizer, backbone_path):
    from transformers import AutoModel

    embeddings = AutoModel.from_pretrained(backbone_path).get_input_embeddings().weight.detach()
    encoded = tokenizer([SENTENCES[0], SENTENCES[1], "a gripping story"], truncation=True, max_length=32)
    train = Dataset.from_dict(dict(encoded) | {"labels": [0, 1, 1]})
    augmented = augment_dataset(train, tokenizer, embeddings, copies=2, seed=1)
    assert len(augmented) == 9 and augmented.features == train.features
    assert augmented[:3] == train[:3]  # the originals come first, unchanged
    for copy in (1, 2):
        rows = augmented[3 * copy : 3 * copy + 3]
        for column in ("attention_mask", "token_type_ids", "labels"):
            assert rows[column] == train[column]
        assert [len(ids) for ids in rows["input_ids"]] == [len(ids) for ids in train["input_ids"]]
    assert augmented[3:6]["input_ids"] != train["input_ids"]  # p = 0.4 over 9 whole words: some replaced
    assert augment_dataset(train, tokenizer, embeddings, copies=2, seed=1)[:] == augmented[:]  # same seed, same rows


@pytest.mark.integration
def test_distillation_stage_trains_on_the_copies(classification_run, data_files, tmp_path):
    """A width_depth stage with one copy per example takes twice the steps of one epoch of the 40 training rows
    (48 minus 8 importance examples), and the run records the augmentation."""
    run_dir, _ = classification_run
    args = ["--flex_stage", "width_depth", "--model_name_or_path", run_dir / "width", "--augment_copies", "1"]
    args += [*csv_arguments(data_files, tmp_path), "--label_column_name", "sentiment", *TINY_BUDGET]
    train_here(*args, "--max_steps", "-1", "--num_train_epochs", "1", "--save_strategy", "no")
    assert json.loads((tmp_path / "stage_results.json").read_text())["steps"] == 2 * 40 // 8
    assert json.loads((tmp_path / "run_config.json").read_text())["data"]["augment_copies"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--flex_stage", "final"], "feeds the distillation stages"),
        (["--augment_probability", "0"], "--augment_probability in \\(0, 1\\]"),  # the whole pipeline
    ],
)
def test_augmentation_that_cannot_work_is_refused_before_training(data_files, tmp_path, extra, message):
    args = [*csv_arguments(data_files, tmp_path), "--label_column_name", "sentiment", *TINY_BUDGET]
    with pytest.raises(SystemExit, match=message):
        train_here(*args, "--augment_copies", "1", *extra)
    assert not any(tmp_path.iterdir())
