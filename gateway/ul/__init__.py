"""The DICOM upper layer (PS3.8), written sans-IO: bytes and events in, outputs out."""
