"""`facesearch backfill`: index whole photo archives (folders, listings, S3 buckets) through
the gateway, checkpointed and sharded."""
