"""pip install clients/python: the client package plus the stubs generated from the repository's proto."""
import pathlib
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import gen_stubs  # noqa: E402


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        gen_stubs.generate(pathlib.Path(self.build_lib))


setup(
    name="adaptd-client",
    version="0.1.0",
    description="Python client of Adaptd: sessions that learn while they serve",
    packages=["adaptd_client"],
    python_requires=">=3.9",
    install_requires=["grpcio>=1.60", "protobuf>=4.25"],
    cmdclass={"build_py": BuildWithStubs},
)
