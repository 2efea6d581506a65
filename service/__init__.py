"""zns-gate: the sender-side quality and quota gate for Zalo Notification Service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zns-gate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
