"""python -m services.embedder: prepares the models if needed and runs Triton on them
(the embedder service), with settings from the environment."""

import sys

from services.embedder.serving.serve import main

if __name__ == "__main__":
    sys.exit(main())
