"""Python client of Adaptd (see client.py)."""
from adaptd_client.client import AdaptdError, Client, Turn

__all__ = ["AdaptdError", "Client", "Turn"]
