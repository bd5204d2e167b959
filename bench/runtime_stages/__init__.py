"""Stages and actors owned by bench/runtime.py (nothing here is part of the service)."""
