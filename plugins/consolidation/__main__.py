"""`python -m consolidation ...` (PYTHONPATH=plugins); see consolidation.cli.main."""
from consolidation.cli.main import main

if __name__ == "__main__":  # Airflow's plugin loader imports files too; only run as a program
    raise SystemExit(main())
