"""The query engine: SQL, plans, rewrites, secure runtime, DP, ledgers, transport."""
