"""The local model server (`protege model-server`): a base model with LoRA adapters and batching behind an
OpenAI-compatible HTTP API with vLLM's adapter routes. A process of its own: the gateway starts it and talks
HTTP to it, and nothing in the gateway imports this package."""
