"""Running the whole suite on one machine: as child processes (``facesearch up``) or in one
process (tests and benchmarks)."""
