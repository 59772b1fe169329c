"""Offline evaluation of face recognition: the measures thresholds are chosen with."""
