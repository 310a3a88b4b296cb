"""Bulk ingestion of model releases: manifest → plan → workers writing shards → one merger."""
