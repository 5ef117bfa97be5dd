Routing rules on any data element and on the association, tag morphing and PS3.15 Annex E de-identification per route, drop-in plugins, and `dicom-gateway check` to test rules on files.
