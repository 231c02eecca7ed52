"""The import of finished runs into MLflow: the store and its lock (``store``), what each MLflow
run holds (``specs``) and the locked, idempotent pass over a run or a sweep (``importer``)."""
