"""Simulated instruments on Modbus TCP/RTU for the demo, the tests and the benches.

Not part of the edge agent: `edge_agent` never imports it (tests/test_purity.py checks), so a plant's
agent runs without it.
"""
