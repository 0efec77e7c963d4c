"""`python -m consolidation ...` (PYTHONPATH=plugins); see consolidation.cli."""
from consolidation.cli import main

if __name__ == "__main__":  # Airflow's plugin loader imports files too; only run as a program
    raise SystemExit(main())
