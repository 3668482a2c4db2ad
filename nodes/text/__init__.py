"""Prompt text: tokenizing with emphasis and 77-token chunks, and textual-inversion embeddings."""
