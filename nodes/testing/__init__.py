"""Helpers for tests and scripts: tiny random models of each family, checkpoint export in the real key layouts,
analytic denoisers. Never registered as nodes."""
