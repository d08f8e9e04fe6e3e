"""Model packs bundled with pixgen, found by pixgen.models.packs at run time; nothing outside a pack imports it."""
