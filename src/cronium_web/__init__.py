"""Cronium's web backend and command line (the web app arrives in a later release)."""
