#!/usr/bin/env python3
"""Verify a kiln-signed DSSE envelope with securesystemslib and with in-toto.

usage: verify_envelope.py PUBLIC_KEY_PEM KEYID ENVELOPE_JSON

The key id is kiln's (sha256 of the SPKI DER); this script recomputes it and checks that it
matches, then verifies with securesystemslib's DSSE Envelope and in-toto's Envelope model.
Prints one "ok ..." line per check; exits 1 on the first failure.
"""
import copy
import hashlib
import json
import sys

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def main() -> int:
    pem_path, keyid, env_path = sys.argv[1:4]
    with open(pem_path, "rb") as f:
        pub = load_pem_public_key(f.read())
    spki = pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if hashlib.sha256(spki).hexdigest() != keyid:
        print(f"FAIL key id: sha256(SPKI DER) is {hashlib.sha256(spki).hexdigest()}, kiln says {keyid}")
        return 1
    print("ok key id = sha256(SPKI DER)")
    key = SSlibKey.from_crypto(pub, keyid=keyid)

    with open(env_path, "rb") as f:
        env_dict = json.load(f)
    # from_dict rewrites the signature dicts in place: give each library its own copy.
    env = Envelope.from_dict(copy.deepcopy(env_dict))
    try:
        env.verify([key], 1)
    except Exception as e:  # noqa: BLE001 - report any verification failure
        print(f"FAIL securesystemslib: {type(e).__name__}: {e}")
        return 1
    print("ok securesystemslib")

    from in_toto.models.metadata import Envelope as InTotoEnvelope

    itenv = InTotoEnvelope.from_dict(copy.deepcopy(env_dict))
    key_dict = key.to_dict()
    key_dict["keyid"] = keyid
    try:
        itenv.verify_signature(key_dict)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL in-toto: {type(e).__name__}: {e}")
        return 1
    print("ok in-toto")

    statement = json.loads(env.payload)
    if env.payload_type != "application/vnd.in-toto+json":
        print(f"FAIL payloadType {env.payload_type}")
        return 1
    if statement.get("_type") != "https://in-toto.io/Statement/v1":
        print(f"FAIL statement _type {statement.get('_type')}")
        return 1
    print("ok statement v1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
