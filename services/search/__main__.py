"""python -m services.search: runs the search service with settings from the environment."""

from services.runtime.entrypoint import run_service
from services.search.server import run
from services.search.settings import SearchSettings

if __name__ == "__main__":
    run_service(SearchSettings, run)
