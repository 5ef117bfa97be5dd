"""DICOMweb (PS3.18): STOW-RS towards destinations (issue 17) and, beside it, the inbound service.

- :mod:`gateway.dicomweb.body`: the ``multipart/related`` request body, streamed from spool files;
- :mod:`gateway.dicomweb.stow_response`: the Store Instances Response (PS3.18 10.5.3), parsed and classified per instance;
- :mod:`gateway.dicomweb.client_auth`: the ``Authorization`` header of an outgoing request (basic, bearer, OAuth2).
"""
