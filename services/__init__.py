"""The facesearch services: detector, embedder and search, and their shared runtime."""
