"""Alerts: rules over readings, the life of each alert, and the notices that go out.

Pure core: rules, state, messages. I/O: engine (the running service and its state file), notify
(the delivery channels).
"""
