"""The suite runs against a live kiln-server named by KILN_ADDR (host:port).

`cargo test --test python_sdk` starts one and runs this suite; by hand:

    KILN_LISTEN=127.0.0.1:50099 KILN_DATA_DIR=/tmp/kiln-sdk target/debug/kiln-server &
    KILN_ADDR=127.0.0.1:50099 python -m pytest sdk/python/tests -q
"""

import os

import pytest

import kiln_sdk


@pytest.fixture(scope="session")
def addr():
    address = os.environ.get("KILN_ADDR")
    if not address:
        pytest.skip("KILN_ADDR is not set: point it at a running kiln-server")
    return address


@pytest.fixture(scope="session")
def client(addr):
    with kiln_sdk.Client(addr, timeout=60) as c:
        yield c
