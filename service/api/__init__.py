"""The HTTP API of docs/api.md: answers for senders, from the OA's state."""
