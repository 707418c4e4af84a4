"""Cronium's built-in executors, each a plugin module of its own: ``local`` and ``http``.

Nothing is imported here, so that loading one executor never loads another's dependencies.
"""
