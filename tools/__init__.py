"""Developer-only tools run from a checkout (`make up` / `make down`); not packaged."""
