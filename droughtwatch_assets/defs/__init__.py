"""The Dagster shell over the plain core: one folder per domain, one file per kind of definition."""
