"""What a folder holds, to compare before and after a run: files by sha256, links by target, folders by name."""

import hashlib
import os


def file_tree(root) -> dict[str, str]:
    """Every entry under `root` by relative path: `"dir"`, `"link:<target>"` or the file's sha256."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out
