"""Names from clients (task names) made safe to use inside one file name."""

from __future__ import annotations

import hashlib
import re

#: Characters that would leave the file name (path separators) or that no file name should
#: hold (control characters, NUL).
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
#: Bytes of a name kept in a file name (file systems allow 255 per name, with room to spare
#: for a prefix and a date).
MAX_NAME_BYTES = 160


def file_name_part(name: str) -> str:
    """``name`` as part of one file name. An ordinary name is unchanged (lm-eval's file names);
    in any other, path separators and control characters become ``_``, it is cut to
    :data:`MAX_NAME_BYTES`, and a short hash of the original keeps two names apart."""
    safe = _UNSAFE.sub("_", name)
    if safe == name and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cut = safe.encode("utf-8", "surrogatepass")[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    return f"{cut}-{digest}"
