"""Helpers the tests share (servers, synthetic runs, configs); fixtures live in the conftest.py files."""
