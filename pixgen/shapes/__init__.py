"""A procedural world of coloured shapes, with the small models pixgen ships trained on it.

``world`` draws the images and captions, ``judge`` is an independent classifier that scores
prompt fidelity, and ``train_judge`` / ``train_clip`` train the shipped weights.
"""
