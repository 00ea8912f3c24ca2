"""MLflow: the store every stage logs to, the lineage tags of a run, and queries over runs."""
