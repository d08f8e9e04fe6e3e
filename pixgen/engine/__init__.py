"""The engine: the one optimisation loop (``loop``) and the small pure functions it steps with.

``cutouts``, ``augment``, ``inits`` and ``ops`` hold tensor math; nothing here does I/O.
"""
