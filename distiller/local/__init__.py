"""The embedded model server (`protege model-server`): local transformers models, LoRA adapters, batching."""
