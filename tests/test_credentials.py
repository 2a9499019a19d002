"""Store credentials from a Prefect Secret block: applied to the process's environment, never stored."""

from __future__ import annotations

import os

import pytest

from maskbank.flows.credentials import load_credentials
from maskbank.storage.location import LocationError, apply_credentials


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(k, "before")
    yield
    # monkeypatch restores the three variables


def test_apply_credentials_sets_only_known_variables(clean_env):
    assert apply_credentials({"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s"}) == [
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s"
    with pytest.raises(LocationError, match="AWS_SECRET_KEY"):
        apply_credentials({"AWS_SECRET_KEY": "typo"})
    with pytest.raises(LocationError, match="strings"):
        apply_credentials({"AWS_ACCESS_KEY_ID": 12})
    assert os.environ["AWS_ACCESS_KEY_ID"] == "id"  # a refused call sets nothing


def test_secret_block_reaches_the_environment(prefect_harness, clean_env):
    from prefect.blocks.system import Secret

    Secret(value={"AWS_ACCESS_KEY_ID": "from-block", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}).save(
        "maskbank-test-s3", overwrite=True)
    assert load_credentials("maskbank-test-s3") == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL"]
    assert os.environ["AWS_ACCESS_KEY_ID"] == "from-block" and os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert load_credentials(None) == [] and os.environ["AWS_SECRET_ACCESS_KEY"] == "before"
    Secret(value="not json").save("maskbank-test-bad", overwrite=True)
    with pytest.raises(LocationError, match="JSON object"):
        load_credentials("maskbank-test-bad")
    with pytest.raises(LocationError, match="no Prefect Secret block named 'maskbank-test-none'"):
        load_credentials("maskbank-test-none")
