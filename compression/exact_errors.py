"""The one error the exact codecs raise (re-exported by ``compression.codecs``)."""

from __future__ import annotations


class CodecError(ValueError):
    """A tensor cannot be encoded as asked, or a payload is corrupt; the message says which and why."""
