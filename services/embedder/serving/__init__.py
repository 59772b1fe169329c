"""The serving side of the embedder: weights conversion, the Triton model repository, and
the Triton server that serves it."""
