"""Chisel's HTTP/WebSocket server and command-line entry point."""
