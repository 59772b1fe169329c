"""Offline evaluation of face recognition: the measures thresholds are chosen with, and
those models are compared by (``facesearch eval``)."""
