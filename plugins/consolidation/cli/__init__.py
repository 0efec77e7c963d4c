"""The command line, `python -m consolidation ...`: defined in main.build_parser(), handled
by the other modules over consolidation.api (and consolidation.dev)."""
