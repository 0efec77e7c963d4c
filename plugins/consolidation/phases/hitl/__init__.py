"""4D approval through Airflow's human-in-the-loop: the response the cleanup acts on (response) and
what the approver is shown (preview)."""
