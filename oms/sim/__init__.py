"""Simulators for the systems OMS talks to, as real aiohttp servers.

They share no code with OMS's clients, so a bug in a client cannot hide itself
by being mirrored in the simulator that tests it.
"""
