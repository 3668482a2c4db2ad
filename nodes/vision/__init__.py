"""Image conditioning: CLIP vision encoders, their image preprocessing, T2I style adapters and unCLIP's noise
augmentation of image embeddings."""
