"""The HTTP API of DESIGN.md section 5: answers for senders, from the OA's state."""
