"""ModernGPT2: GPT-2-class language models with Gemma2 internals and optional per-layer embeddings.

Importing the package registers the config and models with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_moderngpt2 import ModernGPT2Config
from .modeling_moderngpt2 import (
    ModernGPT2ForCausalLM,
    ModernGPT2ForSequenceClassification,
    ModernGPT2ForTokenClassification,
    ModernGPT2Model,
    ModernGPT2PreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register("moderngpt2", ModernGPT2Config, exist_ok=True)
AutoModel.register(ModernGPT2Config, ModernGPT2Model, exist_ok=True)
AutoModelForCausalLM.register(ModernGPT2Config, ModernGPT2ForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ModernGPT2Config, ModernGPT2ForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(ModernGPT2Config, ModernGPT2ForTokenClassification, exist_ok=True)

# save_pretrained then copies the modeling code next to the weights and writes an `auto_map`, so a checkpoint
# loads with `trust_remote_code=True` where this package is not installed.
ModernGPT2Config.register_for_auto_class()
ModernGPT2Model.register_for_auto_class("AutoModel")
ModernGPT2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ModernGPT2ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
ModernGPT2ForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")

__all__ = [
    "ModernGPT2Config",
    "ModernGPT2Model",
    "ModernGPT2ForCausalLM",
    "ModernGPT2ForSequenceClassification",
    "ModernGPT2ForTokenClassification",
    "ModernGPT2PreTrainedModel",
]
