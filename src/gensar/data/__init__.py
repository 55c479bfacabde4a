"""Canonical tables, ingestion adapters, validation and splits."""
