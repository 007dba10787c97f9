"""The MoL Studio REST API (FastAPI) and the service commands of the `mol` CLI."""
