"""Weight patches that apply only while a patched model runs (LoRA today)."""
