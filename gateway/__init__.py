"""dicom-gateway: a DICOM routing gateway built on Twisted.

Receives C-STORE durably into a spool, routes and morphs instances, and forwards
them to destination application entities.
"""

__version__ = "0.1.0"
