import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_libraries() -> None:
    # The ocpp library logs every frame at INFO; keep failures readable.
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
