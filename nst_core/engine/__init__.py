"""The Gatys optimisation: torch and Pillow only; no URIs, no storage, no Prefect."""
