"""kiln_sdk: a small Python client for kiln's gRPC API.

>>> import kiln_sdk
>>> client = kiln_sdk.Client("localhost:50051")
>>> job = client.submit("examples/rings.json", wait=True)
>>> client.predict("rings", numpy.array([[1.0, 0.0]])).outputs

The generated messages are in :mod:`kiln_sdk.pb`.
"""

from kiln_sdk import pb
from kiln_sdk.client import Client, KilnError, Prediction

__all__ = ["Client", "KilnError", "Prediction", "pb"]
__version__ = "0.1.0"
