"""Runs that outlive one connection: the run lease per database (lease), ledger entries whose
process is gone (interrupted), and legacy schemas an earlier 4D run already dropped (dropped)."""
