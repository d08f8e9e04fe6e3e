"""Models: VQGAN and CLIP architectures, the registry and factory, downloads, the local store, safe loading, packs.

``vqgan``, ``clip`` and ``inference`` are the modules; ``registry`` reads ``checkpoints.yaml``,
``factory`` builds models from it, ``downloads``/``store``/``hashes`` fetch and vouch for files,
``safe_load`` reads them without unpickling code, and ``packs`` plugs in model packs.
"""
