"""The embedder: FaceNet embeddings served by NVIDIA Triton Inference Server."""
