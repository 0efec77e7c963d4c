# Airflow 3.3.2 (the version requirements.txt pins) extended with the project's requirements.
# Used by docker-compose.yaml (`build: .`); dags/, plugins/ and include/ are mounted, not copied.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /requirements.txt
# apache-airflow is pinned in requirements.txt to the image's version, so pip keeps the image's Airflow.
RUN pip install --no-cache-dir -r /requirements.txt
