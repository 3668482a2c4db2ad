"""Chisel's built-in nodes: declarations only, one module per ComfyUI category. Every ``Node`` subclass defined in
a module of this package is registered (the ``chisel.nodes`` entry point names this package)."""
