"""airflow"""
