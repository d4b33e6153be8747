"""CURVE keys: the operator issues them to Handlers that name none, repairs them and rotates them.

``secrets.py`` reads and writes the Secrets that hold them, ``issuer.py``
decides how each Handler is called and keeps its keys, ``rotation.py`` says
when a rotation takes its next step (docs/security.md).
"""
