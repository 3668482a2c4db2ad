"""Image tensors and files: decoding and saving pictures, resizing, inpainting masks."""
