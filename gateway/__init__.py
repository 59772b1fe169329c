"""The facesearch gateway: the public API, the command line and the suite launcher."""
