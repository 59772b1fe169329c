"""Face vector stores behind one interface: ``FaceStore``."""
