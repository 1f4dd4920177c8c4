"""Codecs: bytes of data records <-> columns of features with a key per record."""
