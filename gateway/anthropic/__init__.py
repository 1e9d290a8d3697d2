"""Anthropic's dialect: `/v1/messages` translated onto the chat core, its stream events and its error shape."""
