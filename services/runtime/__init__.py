"""What every facesearch service shares: settings, logging, metrics and the gRPC server."""
