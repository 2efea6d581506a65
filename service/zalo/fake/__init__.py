"""A local Zalo for development and tests (`zns-gate fake-zalo`).

It speaks Zalo's OAuth v4 and ZNS business API with their shapes, quirks and
error codes, keeps everything in memory, and posts signed webhooks to a gate.
It is never a client of the real Zalo and never stores anything on disk.
"""

from service.zalo.fake.scenario import Scenario, ScenarioError, default_scenario, load_scenario
from service.zalo.fake.server import FakeZaloServer, build_fake_app

__all__ = [
    "FakeZaloServer",
    "Scenario",
    "ScenarioError",
    "build_fake_app",
    "default_scenario",
    "load_scenario",
]
