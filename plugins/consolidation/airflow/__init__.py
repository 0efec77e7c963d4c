"""What Airflow runs: the task bodies (tasks) over consolidation.api, their one wrapper
(runtime), the database connection (connection), the DAG header and TaskGroups (dags), the
4D's human-in-the-loop approval (approval), the nightly failure notifier (notify)."""
