#!/usr/bin/env python3
"""Compile controller/link/sparkplug/sparkplug_b.proto into descriptor.py (run after editing it).

The schema is the protobuf definition printed in the Sparkplug 3.0 specification. We ship its
compiled descriptor (protoc's FileDescriptorProto, as bytes) rather than protoc's generated
sparkplug_b_pb2.py: schema.py loads it into a descriptor pool of our own, so another Sparkplug
library in the same process (they all register "sparkplug_b.proto") cannot clash with ours, and
the generated code's ties to one protobuf runtime version do not apply.
tests/sparkplug/test_schema.py compiles the .proto again and fails if descriptor.py is stale.

Usage: tools/gen-sparkplug-descriptor.py [--check]   (needs `protoc`: apt install protobuf-compiler)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "controller", "link", "sparkplug")
PROTO = "sparkplug_b.proto"
OUT = os.path.join(HERE, "descriptor.py")


def compile_proto() -> bytes:
    """The serialized FileDescriptorProto of sparkplug_b.proto, as protoc compiles it."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        subprocess.run(["protoc", f"--proto_path={HERE}", f"--descriptor_set_out={out}", PROTO], check=True)
        with open(out, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    (file_proto,) = fds.file
    return file_proto.SerializeToString(deterministic=True)


def render(serialized: bytes) -> str:
    text = serialized.hex()
    body = "\n".join(f'    "{text[i:i + 96]}"' for i in range(0, len(text), 96))
    return ('"""The compiled Sparkplug B schema (sparkplug_b.proto): protoc\'s FileDescriptorProto in hex.\n'
            'Made by tools/gen-sparkplug-descriptor.py: do not edit; edit the .proto, run the tool."""\n\n'
            f"SERIALIZED = bytes.fromhex(\n{body}\n)\n")


def main(argv: list[str]) -> int:
    text = render(compile_proto())
    if argv[1:] == ["--check"]:
        with open(OUT) as f:
            if f.read() != text:
                print(f"{OUT} is stale: run tools/gen-sparkplug-descriptor.py", file=sys.stderr)
                return 1
        return 0
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
