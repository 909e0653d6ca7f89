"""The mock payment channel: payments, an append-only ledger, notifications with faults."""
