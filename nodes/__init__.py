"""Chisel's node library and the diffusion machinery behind it."""
