"""The end-to-end demo on embedded defaults: simulator -> agents -> broker -> gateway -> SQLite."""
