"""Protégé gateway: the OpenAI-compatible proxy. Never imports torch."""
