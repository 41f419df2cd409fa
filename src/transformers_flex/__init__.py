"""transformers-flex: one BERT checkpoint, every width and depth sub-network (DynaBERT / Flexible BERT).

Importing the package registers `flexbert` with the Auto classes, so `AutoModel*.from_pretrained` on a FlexBert
checkpoint works without `trust_remote_code`, and the pipeline tasks `flex-text-classification` and
`flex-question-answering` (each a name of its own: registering a built-in task name would replace its pipeline).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_flexbert import FlexBertConfig
from .export import to_bert
from .flexbert_classification import PIPELINE_TASK as CLASSIFICATION_TASK
from .flexbert_classification import FlexBertTextClassificationPipeline
from .flexbert_qa import PIPELINE_TASK as QUESTION_ANSWERING_TASK
from .flexbert_qa import FlexBertQuestionAnsweringPipeline
from .flops import paper_flops, subnet_flops, subnet_num_parameters
from .importance import Importance, compute_importance, graft, rewire
from .modeling_flexbert import (
    FlexBertDynamicOutput,
    FlexBertForQuestionAnswering,
    FlexBertForSequenceClassification,
    FlexBertModel,
    FlexBertPreTrainedModel,
)
from .trainer import FlexTrainer
from .training_args import FlexTrainingArguments

__version__ = "0.1.0"

AutoConfig.register(FlexBertConfig.model_type, FlexBertConfig, exist_ok=True)
AutoModel.register(FlexBertConfig, FlexBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(FlexBertConfig, FlexBertForSequenceClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(FlexBertConfig, FlexBertForQuestionAnswering, exist_ok=True)

# Our pipelines under names of their own: registering "text-classification" would replace that pipeline for every
# model, and transformers 5.24 has no question-answering pipeline and refuses that task name.
PIPELINE_REGISTRY.register_pipeline(
    CLASSIFICATION_TASK,
    pipeline_class=FlexBertTextClassificationPipeline,
    pt_model=AutoModelForSequenceClassification,
)
PIPELINE_REGISTRY.register_pipeline(
    QUESTION_ANSWERING_TASK, pipeline_class=FlexBertQuestionAnsweringPipeline, pt_model=AutoModelForQuestionAnswering
)

# Saving copies the portable code files into the checkpoint, so users without this package can load it.
FlexBertConfig.register_for_auto_class()
FlexBertModel.register_for_auto_class("AutoModel")
FlexBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
FlexBertForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")

__all__ = [
    "FlexBertConfig",
    "FlexTrainer",
    "FlexTrainingArguments",
    "Importance",
    "compute_importance",
    "graft",
    "paper_flops",
    "rewire",
    "subnet_flops",
    "subnet_num_parameters",
    "to_bert",
    "FlexBertDynamicOutput",
    "FlexBertForQuestionAnswering",
    "FlexBertForSequenceClassification",
    "FlexBertModel",
    "FlexBertPreTrainedModel",
    "FlexBertQuestionAnsweringPipeline",
    "FlexBertTextClassificationPipeline",
]
