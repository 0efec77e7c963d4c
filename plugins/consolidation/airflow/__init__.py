"""What Airflow runs: the task bodies (tasks) over consolidation.api, their one wrapper
(runtime), the database connection (connection), the DAG header and TaskGroups (dags), the
approval sensor (sensors), the nightly failure notifier (notify)."""
