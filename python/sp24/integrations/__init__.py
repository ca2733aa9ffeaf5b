"""Integrations with training frameworks (each imports its framework; sp24 itself does not)."""
