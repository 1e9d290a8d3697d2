"""OpenAI's dialect: `/v1/chat/completions` and `/v1/models`, and the OpenAI error shape the other JSON routes share."""
