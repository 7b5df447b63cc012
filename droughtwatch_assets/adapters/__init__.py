"""The I/O adapters: everything that talks to a system outside the process.

Object storage (a local folder or S3), the MLflow tracking store and registry, the monitoring
database, S3 event notifications in SQS, and the benchmark's download. No Dagster here; the
resources in ``defs/resources.py`` wrap these.
"""
