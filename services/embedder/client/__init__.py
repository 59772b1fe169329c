"""The client side of the embedder: the ``Embedder`` interface callers use and its backends
(a Triton server, or the same model run in the caller's process)."""
