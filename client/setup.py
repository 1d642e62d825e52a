"""Generates the gRPC stubs from ../proto into seglabel_api/pb before the package is built (the
same generator as `make proto`); all other metadata is in pyproject.toml."""

import importlib.util
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
STUBS = HERE / "seglabel_api" / "pb" / "seglabel" / "v1" / "seglabel_pb2.py"
GENERATOR = HERE.parent / "scripts" / "gen_proto.py"

if GENERATOR.is_file():  # a checkout: (re)generate so the stubs match proto/
    spec = importlib.util.spec_from_file_location("gen_proto", GENERATOR)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(HERE / "seglabel_api" / "pb")
elif not STUBS.is_file():
    raise SystemExit("seglabel_api/pb is missing and ../scripts/gen_proto.py is not here to build it")

setup()
