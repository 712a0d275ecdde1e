"""Aua's edge agent beside thingsboard-gateway and Node-RED, on one counting simulator (issue 17).

    .venv/bin/python -m bench.peers [--quick]

See bench/peers/run.py for what is measured and README.md ("Beside the peers") for the latest figures.
"""
