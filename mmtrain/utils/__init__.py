"""Helpers: safe instantiation (allow-list), config checks."""
