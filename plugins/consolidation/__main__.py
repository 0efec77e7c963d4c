"""`python -m consolidation ...` (PYTHONPATH=plugins); see consolidation.cli."""
from consolidation.cli import main

raise SystemExit(main())
