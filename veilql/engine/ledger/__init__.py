"""VeilQL engine: ledger."""
