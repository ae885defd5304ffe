"""Serialising rendered objects for server-side apply.

The API server decodes apply patches (``application/apply-patch+yaml``) as YAML, which
rejects or folds characters that JSON carries raw: DEL and the C1 controls ("control
characters are not allowed"), NEL and U+2028/U+2029 (read as line breaks), BOM, U+FFFE and
U+FFFF. A prompt containing one is stored fine in the AgentDeployment (JSON), so its children
must be sent with those characters escaped.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NOT_YAML_PRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def apply_patch_body(obj: dict[str, Any]) -> str:
    """JSON (so also YAML) with YAML-forbidden characters escaped; send it as a string body
    with content type ``application/apply-patch+yaml``."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return _NOT_YAML_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
