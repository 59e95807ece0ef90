#!/usr/bin/env python3
# Read one file of an Arvados collection with the real Arvados Python SDK
# and write its bytes, unchanged, to stdout. crunch-run's integration tests
# use it to prove that collections written through the fake Arvados
# server (tests/common/fake_arvados.rs) are readable by real clients.
#
# usage: read_collection.py PDH_OR_UUID PATH [--host H] [--token T] [--insecure]
# Defaults come from ARVADOS_API_HOST / ARVADOS_API_TOKEN /
# ARVADOS_API_HOST_INSECURE; the CA bundle from SSL_CERT_FILE (honoured by
# the SDK for both API and Keep requests).
# Exit status 0 on success; 1 with a message on stderr otherwise.
#
# PATH is bytes, as file names are. crunch-run writes a name that is not UTF-8 (or that holds
# a non-ASCII whitespace character, such as U+00A0) with every byte >= 0x80 as an octal
# escape, and the SDK reads "\NNN" as the code point NNN: so each path component is taken
# as UTF-8 if it is (and has no such character), else as Latin-1, one code point per byte.

import argparse
import os
import sys


def sdk_path(raw):
    """The SDK's name for the path whose bytes are `raw` (see the header)."""
    parts = []
    for part in raw.split(b"/"):
        try:
            text = part.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or any(ord(c) > 0x7F and c.isspace() for c in text):
            text = part.decode("latin-1")
        parts.append(text)
    return "/".join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("collection", help="portable data hash or uuid")
    p.add_argument("path", help="file path inside the collection, e.g. dir/file.txt")
    p.add_argument("--host", default=os.environ.get("ARVADOS_API_HOST"))
    p.add_argument("--token", default=os.environ.get("ARVADOS_API_TOKEN"))
    p.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("ARVADOS_API_HOST_INSECURE", "").lower() in ("1", "yes", "true"),
    )
    args = p.parse_args()
    if not args.host or not args.token:
        print("read_collection.py: need --host/--token or ARVADOS_API_HOST/ARVADOS_API_TOKEN",
              file=sys.stderr)
        return 1

    import arvados
    import arvados.collection

    api = arvados.api("v1", host=args.host, token=args.token, insecure=args.insecure,
                      num_retries=2)
    coll = arvados.collection.CollectionReader(args.collection, api_client=api, num_retries=2)
    path = sdk_path(os.fsencode(args.path))
    path = path[2:] if path.startswith("./") else path
    out = sys.stdout.buffer
    with coll.open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
