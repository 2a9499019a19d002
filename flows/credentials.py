"""Store credentials for deployments: a Prefect ``Secret`` block holding the environment variables that
reach an object-storage store, loaded into the flow's process before the store is opened.

    from prefect.blocks.system import Secret
    Secret(value={"AWS_ACCESS_KEY_ID": "...", "AWS_SECRET_ACCESS_KEY": "..."}).save("maskbank-s3")

and run the flow with ``credentials="maskbank-s3"``. Only the block's name is a flow parameter; the values
stay in Prefect's secret storage and are never written to the store, its versions, logs or run reports.
"""

from __future__ import annotations

import json

from maskbank.storage.location import LocationError, apply_credentials


def load_credentials(block: str | None) -> list[str]:
    """Apply the variables of the Secret block named ``block`` (no-op for None); returns their names."""
    if not block:
        return []
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block).get()
    except ValueError as e:
        raise LocationError(f"no Prefect Secret block named {block!r}: {e}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise LocationError(f"Secret block {block!r} must hold a JSON object of environment variables") from None
    if not isinstance(value, dict):
        raise LocationError(f"Secret block {block!r} must hold an object of environment variables")
    return apply_credentials(value)
