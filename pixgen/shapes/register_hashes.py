"""Write the sha256 of every bundled weights file into checkpoints.yaml (after retraining).

    python -m pixgen.shapes.register_hashes
"""

from __future__ import annotations

import re

from pixgen.downloads import sha256_file
from pixgen.registry import BUILTIN_REGISTRY, KINDS, read_registry_file


def main() -> None:
    """Update each ``bundled: {path: P, sha256: H}`` line in place, keeping comments and layout."""
    path = BUILTIN_REGISTRY.resolve()
    text = path.read_text(encoding="utf-8")
    entries = read_registry_file(BUILTIN_REGISTRY)
    for kind in KINDS:
        for entry in entries[kind].values():
            if entry.bundled is None or not entry.bundled.path.is_file():
                continue
            relative = entry.bundled.path.relative_to(BUILTIN_REGISTRY.parent).as_posix()
            digest = sha256_file(entry.bundled.path)
            pattern = rf"(path: {re.escape(relative)}, sha256: )\S+?(\}})"
            text, count = re.subn(pattern, rf"\g<1>{digest}\g<2>", text)
            print(f"{entry.name}: {digest}" if count else f"{entry.name}: no bundled line to update")
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
