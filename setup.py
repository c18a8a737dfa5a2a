"""Minimal setup.py: only here to build the cffi extension (everything else is in pyproject.toml)."""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
