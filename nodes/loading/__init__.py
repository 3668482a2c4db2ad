"""Reading weight files: family detection from keys and shapes, configs, LDM<->diffusers key maps, and loading
checkpoints and VAEs completely and offline."""
