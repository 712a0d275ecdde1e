"""MRV: rollups, emission arithmetic, compliance tests, QA of the analysers and the reports built on them.

Pure core: arithmetic, rollup, substitution, compliance, calibration, operating_state, twenty_minute,
report and the QA rules. I/O: rollup_engine, retention, operating_log, report_production, report_files,
report_pdf, report_feed, mrv_cli, state_feed and the QA logs (SQLite, files, HTTP).
"""
