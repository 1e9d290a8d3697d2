"""The admin API under `/admin` (bearer admin token), in OpenAI's error shape."""
