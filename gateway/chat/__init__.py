"""The chat core: one request type for every dialect (`request`), the cascade and accounting (`service`).
No web framework."""
