"""The client side: start a server command as a child, speak MCP to it, stop it by the contract.

May import the standard library, psutil, ``pytest_leanhost.record`` and
``pytest_leanhost.core``; never pytest, never ``plugin``.
"""
