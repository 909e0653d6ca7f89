"""The inventory service: TCC stock reservations (try / confirm / cancel) with a TTL sweeper."""
