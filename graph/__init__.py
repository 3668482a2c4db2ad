"""Chisel's engine: workflow model, node registry, validation, planning, cache and executor (no torch)."""
