"""Loaded by Python at start-up in the `dl` processes the tests start (conftest puts this folder first on PYTHONPATH):
installs the test-only fault injection when a DL_TEST_* variable asks for it. dl itself knows nothing of these."""

import os

if any(name.startswith("DL_TEST_") for name in os.environ):
    import dl_test_hooks

    dl_test_hooks.install()
