"""Registry of secret values and redaction of everything shown, logged or journaled.

Secrets come from files (the backup, the target, a secrets_file), never from notebook
parameters: papermill copies parameters into the executed notebook.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

MASK = "«redacted»"


class SecretRegistry:
    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        # For fingerprints that tell two redacted values apart; random per process, never stored.
        self._key = os.urandom(32)

    def add(self, value: str | bytes | None, label: str = "secret") -> None:
        """Register a value; empty values are ignored (nothing to hide)."""
        if value is None:
            return
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not value.strip():
            return
        if value not in self._values:
            self._values[value] = label
            self._pattern = None

    def __contains__(self, value: str) -> bool:
        return value in self._values

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> list[str]:
        return list(self._values)

    def _compiled(self) -> re.Pattern[str] | None:
        if not self._values:
            return None
        if self._pattern is None:
            # Longest first, so a secret that contains another is masked whole.
            alts = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in alts))
        return self._pattern

    def redact(self, text: Any) -> Any:
        """Mask every registered value in text; other types pass through redact_obj."""
        if not isinstance(text, str):
            return self.redact_obj(text)
        pattern = self._compiled()
        if pattern is None:
            return text
        return pattern.sub(MASK, text)

    def redact_keyed(self, text: str) -> str:
        """Mask every registered value with a short keyed fingerprint («redacted #1a2b3c4d»), so a diff
        says whether a secret changed without showing it: HMAC-SHA256 under a random key of this process,
        so a fingerprint cannot be matched against guesses and differs between runs."""
        pattern = self._compiled()
        if pattern is None:
            return text

        def mark(m: re.Match[str]) -> str:
            digest = hmac.new(self._key, m.group(0).encode(), hashlib.sha256).hexdigest()[:8]
            return f"{MASK[:-1]} #{digest}»"

        return pattern.sub(mark, text)

    def redact_obj(self, obj: Any) -> Any:
        """Redact strings inside dicts, lists, tuples and pandas frames."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, bytes):
            return self.redact(obj.decode("utf-8", "replace"))
        if isinstance(obj, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.redact_obj(v) for v in obj)
        if hasattr(obj, "map") and hasattr(obj, "columns"):  # pandas DataFrame
            return obj.map(lambda v: self.redact(v) if isinstance(v, str) else v)
        return obj


# One registry per process (one kernel runs one recovery); Context uses it too.
REGISTRY = SecretRegistry()
