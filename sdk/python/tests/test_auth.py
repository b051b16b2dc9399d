"""Bearer-token authentication against a server started with an auth token
(KILN_AUTH_ADDR and KILN_AUTH_TOKEN, set by tests/python_sdk.rs)."""

import os

import grpc
import pytest

import kiln_sdk


@pytest.fixture(scope="module")
def auth_server():
    addr, token = os.environ.get("KILN_AUTH_ADDR"), os.environ.get("KILN_AUTH_TOKEN")
    if not addr or not token:
        pytest.skip("KILN_AUTH_ADDR/KILN_AUTH_TOKEN are not set")
    return addr, token


def test_the_token_is_sent_on_every_call(auth_server):
    addr, token = auth_server
    with kiln_sdk.Client(addr, token=token, timeout=30) as client:
        assert client.jobs() == []
        assert client.models() == []
        # A streaming call carries it too.
        with pytest.raises(kiln_sdk.KilnError) as err:
            list(client.watch("job-missing"))
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_a_missing_or_wrong_token_is_unauthenticated(auth_server, monkeypatch):
    addr, token = auth_server
    monkeypatch.delenv("KILN_TOKEN", raising=False)
    for wrong in (None, token + "x"):
        with kiln_sdk.Client(addr, token=wrong, timeout=30) as client:
            with pytest.raises(kiln_sdk.KilnError) as err:
                client.jobs()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_token_comes_from_kiln_token(auth_server, monkeypatch):
    addr, token = auth_server
    monkeypatch.setenv("KILN_TOKEN", token)
    with kiln_sdk.Client(addr, timeout=30) as client:
        assert client.jobs() == []
