"""python -m services.detector: runs the detector service with settings from the environment."""

from services.detector.server import run
from services.detector.settings import DetectorSettings
from services.runtime.entrypoint import run_service

if __name__ == "__main__":
    run_service(DetectorSettings, run)
