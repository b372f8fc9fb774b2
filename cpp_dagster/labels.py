"""Kubernetes label values: what any value that becomes a pod label (or an image tag)
must be. At most 63 characters of letters, digits, `-`, `_` and `.`, beginning and ending
with a letter or digit (kubernetes.io: "Labels and Selectors", syntax and character set)."""

from __future__ import annotations

import re

MAX_LABEL_VALUE = 63
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
RULE = f"at most {MAX_LABEL_VALUE} letters, digits, '-', '_' or '.', starting and ending with a letter or digit"


def is_label_value(value: object) -> bool:
    return isinstance(value, str) and bool(_LABEL_VALUE.match(value))
