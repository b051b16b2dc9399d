"""gRPC stubs generated from the repository's proto/ by setup.py (not committed)."""
