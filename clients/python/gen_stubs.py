"""Generates the Python gRPC stubs of proto/adaptd/v1/adaptd.proto into a directory.

    python clients/python/gen_stubs.py OUT_DIR

OUT_DIR then holds the package `adaptd.v1` (adaptd_pb2, adaptd_pb2_grpc). The build (CMake) and
`pip install clients/python` both call this; nothing generated is checked in.
"""
import pathlib
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def generate(out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = PROTO_ROOT / "adaptd" / "v1" / "adaptd.proto"
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(proto)])
    if rc != 0:
        raise SystemExit(f"gen_stubs: protoc failed on {proto}")
    for package in (out_dir / "adaptd", out_dir / "adaptd" / "v1"):
        (package / "__init__.py").touch()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    generate(pathlib.Path(sys.argv[1]))
