"""A running world with its Postfix and DNS, as the demo runs it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ispcp_lib.sandbox.demo import world_services


@pytest.fixture
def served_params(world) -> Iterator[dict[str, Any]]:
    """Runbook parameters for the running world, its sandbox Postfix and dnsmasq included."""
    with world_services(world) as params:
        yield {**world.runbook_params(), **params}
