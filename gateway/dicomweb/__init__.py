"""DICOMweb: the STOW-RS inbound service (issue 17)."""
