"""The ``facesearch`` command: every verb, for people at a terminal."""
