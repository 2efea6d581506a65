"""Fixtures shared by the integration tests of the Zalo connection."""

from tests.zalo_gate import gate_factory, zalo_factory

__all__ = ["gate_factory", "zalo_factory"]
