#!/usr/bin/env python3
"""Sign an in-toto statement with securesystemslib's CryptoSigner (ECDSA P-256 or Ed25519).

usage: sign_envelope.py ALGORITHM STATEMENT_JSON OUT_DIR
  ALGORITHM: ecdsa-p256 | ed25519

Writes OUT_DIR/key.pub (SPKI PEM) and OUT_DIR/envelope.json (standard DSSE JSON). The
signature's keyid is sha256 of the SPKI DER, as kiln computes it.
"""
import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey


def main() -> int:
    algorithm, statement_path, out_dir = sys.argv[1:4]
    if algorithm == "ecdsa-p256":
        priv = ec.generate_private_key(ec.SECP256R1())
        scheme = "ecdsa-sha2-nistp256"
    elif algorithm == "ed25519":
        priv = ed25519.Ed25519PrivateKey.generate()
        scheme = "ed25519"
    else:
        print(f"unknown algorithm {algorithm}")
        return 2
    pub = priv.public_key()
    spki = pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    keyid = hashlib.sha256(spki).hexdigest()
    signer = CryptoSigner(priv, SSlibKey.from_crypto(pub, keyid=keyid, scheme=scheme))

    with open(statement_path, "rb") as f:
        payload = f.read()
    env = Envelope(payload, "application/vnd.in-toto+json", {})
    env.sign(signer)

    with open(os.path.join(out_dir, "key.pub"), "wb") as f:
        f.write(pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with open(os.path.join(out_dir, "envelope.json"), "w") as f:
        json.dump(env.to_dict(), f)
    print(keyid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
