"""Protégé's distiller: curation, training, evaluation, registry, scheduling — and the `protege` CLI."""
