"""The batch model: manifests, storage, jobs, units, records and the unit runner; no Prefect."""
