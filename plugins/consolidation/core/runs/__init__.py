"""Runs that outlive one connection: the run lease per database (lease), ledger entries whose
process is gone (interrupted), legacy schemas an earlier 4D run already dropped (dropped), and
the 4B step graph 4A leaves for the 4B DAG's parse (step_graph)."""
