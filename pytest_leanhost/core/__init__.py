"""The host side, without pytest: registries, the process table, ownership, the check, the doctor.

May import the standard library, psutil, filelock and platformdirs, and
``pytest_leanhost.record``; never pytest, never ``client`` or ``plugin``.
"""
