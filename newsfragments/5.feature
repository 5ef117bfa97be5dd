DICOM TLS (BCP 195 profiles) on listeners and destinations, access control by AE title, address and certificate, user identity negotiation, and a PS3.15 A.5-shaped audit trail.
