"""The search service: face vectors and their payload in Qdrant."""
