# Kept for `pip install -e .` on Debian 12's setuptools; metadata is in setup.cfg.
from setuptools import setup

setup()
