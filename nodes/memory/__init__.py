"""Model memory: the manager that loads each file once and places modules on the device by byte budget, and the
MODEL/CLIP/VAE handles nodes pass around."""
