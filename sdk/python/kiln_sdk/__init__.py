"""kiln_sdk: a small Python client for kiln's gRPC API.

>>> import kiln_sdk
>>> client = kiln_sdk.Client("localhost:50051")
>>> job = client.submit("examples/rings.json", wait=True)
>>> client.predict("rings", numpy.array([[1.0, 0.0]])).outputs
>>> client.predict("rings", pandas.DataFrame({"x": [1.0], "y": [0.0]}))  # a DataFrame

The generated messages are in :mod:`kiln_sdk.pb`.
"""

from kiln_sdk import pb
from kiln_sdk.client import (
    Client,
    JobFailed,
    KilnError,
    Prediction,
    load_job_file,
    load_sweep_file,
)

__all__ = ["Client", "JobFailed", "KilnError", "Prediction", "load_job_file", "load_sweep_file", "pb"]
__version__ = "0.1.0"
