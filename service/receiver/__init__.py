"""The webhook receiver: verify Zalo's calls and publish them to the event log."""
