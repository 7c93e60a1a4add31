"""Stage 1, what a researcher submits: manifests (schema, loading), their sources (Hub or local,
with provenance), validation and the ``new-submission`` writer."""
