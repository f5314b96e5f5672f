#!/usr/bin/env python3
"""Load a kiln-written PKCS#8 private key with `cryptography` and print its key id.

usage: load_private_key.py KEY_PEM [PASSPHRASE]

Prints sha256 of the public key's SPKI DER (kiln's key id); exits 1 if the key does not load.
"""
import hashlib
import sys

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)


def main() -> int:
    path = sys.argv[1]
    password = sys.argv[2].encode() if len(sys.argv) > 2 else None
    with open(path, "rb") as f:
        try:
            key = load_pem_private_key(f.read(), password=password)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL load: {type(e).__name__}: {e}")
            return 1
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    print(hashlib.sha256(spki).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
