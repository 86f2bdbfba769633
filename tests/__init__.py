"""The test suite is a package, so its modules import what they share as ``tests.conftest``."""
