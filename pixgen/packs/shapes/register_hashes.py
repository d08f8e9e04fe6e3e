"""Write the sha256 of every weights file of the shapes pack into its checkpoints.yaml (after retraining).

    python -m pixgen.packs.shapes.register_hashes
"""

from __future__ import annotations

import re

from pixgen.models.downloads import sha256_file
from pixgen.models.registry import KINDS, read_registry_file
from pixgen.packs.shapes import PACK


def main() -> None:
    """Update each ``bundled: {path: P, sha256: H}`` line in place, keeping comments and layout."""
    registry = PACK.registry
    path = registry.resolve()
    text = path.read_text(encoding="utf-8")
    entries = read_registry_file(registry)
    for kind in KINDS:
        for entry in entries[kind].values():
            if entry.bundled is None or not entry.bundled.path.is_file():
                continue
            relative = entry.bundled.path.relative_to(registry.parent).as_posix()
            digest = sha256_file(entry.bundled.path)
            pattern = rf"(path: {re.escape(relative)}, sha256: )\S+?(\}})"
            text, count = re.subn(pattern, rf"\g<1>{digest}\g<2>", text)
            print(f"{entry.name}: {digest}" if count else f"{entry.name}: no bundled line to update")
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
