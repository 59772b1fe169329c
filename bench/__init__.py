"""facesearch benchmarks; run them with ``make bench``, results go to bench/results/."""
