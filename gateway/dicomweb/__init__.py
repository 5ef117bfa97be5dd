"""DICOMweb (PS3.18): STOW-RS towards destinations and the STOW-RS inbound service (issue 17).

Towards destinations (:mod:`gateway.send.dicomweb` is the sender):

- :mod:`gateway.dicomweb.body`: the ``multipart/related`` request body, streamed from spool files;
- :mod:`gateway.dicomweb.stow_response`: the Store Instances Response (PS3.18 10.5.3), parsed and classified per instance;
- :mod:`gateway.dicomweb.client_auth`: the ``Authorization`` header of an outgoing request (basic, bearer, OAuth2).

Inbound:

- :mod:`gateway.dicomweb.service`: ``POST /studies[/{uid}]`` on its own port(s), into the spool and intake;
- :mod:`gateway.dicomweb.multipart_in`: the sans-IO ``multipart/related`` parser;
- :mod:`gateway.dicomweb.reply`: the Store Instances Response built (JSON or XML);
- :mod:`gateway.dicomweb.tokens`: the clients' bearer tokens file.
"""
