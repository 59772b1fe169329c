"""The exit statuses of the ``facesearch`` verbs.

0 success; 1 the work failed (some photos failed; for ``verify``, not the same person);
2 usage (bad options or settings, no API key, a missing file, an unknown person name);
3 the gateway or a service behind it is unavailable or too slow; 4 the API key was refused.
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4
