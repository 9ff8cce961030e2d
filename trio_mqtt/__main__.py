"""``python -m trio_mqtt``: the same as the ``trio-mqtt`` command."""

from __future__ import annotations

import sys

from trio_mqtt.cli import main

if __name__ == "__main__":
    sys.exit(main())
