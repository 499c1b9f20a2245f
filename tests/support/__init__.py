"""Helpers the test levels share: simulators, settings, keys, an OMS or its API to talk to.

``conftest.py`` files hold fixtures only; what a fixture or a test builds on lives here.
"""
