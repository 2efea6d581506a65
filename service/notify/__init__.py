"""Notifications: the decisions of `zns.decisions`, and the warnings, posted to the
`[[notify]]` targets, signed as Standard Webhooks do (docs/notifications.md)."""
