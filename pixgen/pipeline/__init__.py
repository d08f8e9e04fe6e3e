"""The pipeline: one whole run (validate, claim the folder, load models, drive the engine, write outputs, resume).

``runner`` is the run itself, ``output`` and ``recipe`` what it writes and reads back, ``memory``
and ``devices`` its pre-flight checks, and ``api`` the library calls ``pixgen.render`` and friends.
"""
