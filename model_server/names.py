"""Names shared by the model server's modules; importing this module does not import torch."""

DEFAULT_SERVED_NAME = "smollm2-135m-instruct"
CACHE_ENV = "PROTEGE_MODEL_CACHE"
