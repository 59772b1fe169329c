"""python -m gateway: runs the gateway with settings from the environment."""

from gateway.server import run
from gateway.settings import GatewaySettings
from services.runtime.entrypoint import run_service

if __name__ == "__main__":
    run_service(GatewaySettings, run)
