"""evse-daemon: charge-point software for AC EV chargers on Raspberry-Pi-class boards."""

from importlib import metadata

try:
    __version__ = metadata.version("evse-daemon")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
