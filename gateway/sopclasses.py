"""SOP classes and transfer syntaxes the gateway accepts (PS3.4 Annex B, PS3.5 Annex A, PS3.6 Annex A).

The lists are literals, so that what we accept does not change when pydicom
is upgraded. They were produced by :func:`generate_source` from pydicom's
UID registry (run ``python -m gateway.sopclasses --generate`` and paste the
output over the two generated blocks to refresh them); a unit test checks
that the literals still cover pydicom's and pynetdicom's lists.

Selection rules:

* :data:`STORAGE_SOP_CLASSES`: every registry entry of type "SOP Class" whose
  name contains "Storage", retired ones included (old modalities still send
  them), minus the classes that are not the storage of an instance
  (:data:`NOT_INSTANCE_STORAGE`: Storage Commitment Push/Pull Model and Media
  Storage Directory Storage), plus the few classes newer than the registry
  (:data:`_NEWER_STORAGE_SOP_CLASSES`);
* :data:`ACCEPTED_TRANSFER_SYNTAXES`: the four native encodings, then every
  registry entry of type "Transfer Syntax" except those that can never
  encode a data set on a DICOM association (:data:`NOT_NETWORK_TRANSFER_SYNTAXES`),
  plus the few newer than the registry (:data:`_NEWER_TRANSFER_SYNTAXES`).
  A router forwards bytes unchanged, so accepting a compressed syntax costs
  nothing: the first proposed syntax we accept is the one chosen
  (:mod:`gateway.ul.negotiate`), which keeps the modality's own encoding.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

#: PS3.4 A.4: the Verification SOP Class (C-ECHO).
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

#: PS3.4 C.6.1.1 and C.6.2.1: the Query/Retrieve SOP classes of the Patient
#: Root and Study Root Information Models (issue 16), by verb. Accepted on a
#: listener only where ``query`` (FIND) or ``retrieve`` (MOVE, GET) applies.
QR_FIND_SOP_CLASSES: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"})
QR_MOVE_SOP_CLASSES: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"})
QR_GET_SOP_CLASSES: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"})

#: PS3.5 A.1: the default transfer syntax.
IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
#: PS3.5 A.2.
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
#: PS3.5 A.3 (retired, still sent by old equipment).
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
#: PS3.5 A.5.
DEFLATED_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1.99"

#: Registry entries named "...Storage..." that are not the storage of an
#: instance: storage commitment is an N-ACTION/N-EVENT-REPORT service (PS3.4
#: Annex J) and the Media Storage Directory class only exists in DICOMDIR
#: files (PS3.10), never in a C-STORE.
NOT_INSTANCE_STORAGE: Final = frozenset(
    {
        "1.2.840.10008.1.20.1",  # Storage Commitment Push Model SOP Class
        "1.2.840.10008.1.20.2",  # Storage Commitment Pull Model SOP Class (retired)
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage
    }
)

#: Storage SOP classes published in PS3.6 after the pydicom release we
#: generate from (pynetdicom 3 already lists them).
_NEWER_STORAGE_SOP_CLASSES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.9.100.1": "Waveform Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.9.100.2": "Waveform Acquisition Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
        "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
    }
)

#: Registry transfer syntaxes that never encode a data set on an
#: association: Papyrus 3 was a file format, and the retired RFC 2557 MIME
#: and XML encodings were for non-DIMSE exchange (PS3.5 Annex A, retired).
NOT_NETWORK_TRANSFER_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.20",  # Papyrus 3 Implicit VR Little Endian (retired)
        "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME encapsulation (retired)
        "1.2.840.10008.1.2.6.2",  # XML Encoding (retired)
    }
)

#: Transfer syntaxes published after the pydicom release we generate from
#: (pynetdicom 3 adds them to pydicom's registry at import).
_NEWER_TRANSFER_SYNTAXES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112": "JPEG XL",
        "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
    }
)

#: The native (not encapsulated) syntaxes, in the order we list them first.
_NATIVE: Final = (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE)

#: Syntaxes whose Pixel Data is replaced by a Pixel Data Provider URL
#: (PS3.5 8.4, A.6, A.7, A.11, A.12): encoded as Explicit VR Little Endian,
#: deflated for the "Deflate" variants, and not encapsulated.
_JPIP: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.94",  # JPIP Referenced
        "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
        "1.2.840.10008.1.2.4.204",  # JPIP HTJ2K Referenced
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    }
)

#: Syntaxes whose whole data set is deflated (PS3.5 A.5, A.7, A.12). Note
#: that Deflated Image Frame Compression (1.2.840.10008.1.2.8.1) deflates
#: frames inside encapsulated Pixel Data, not the data set.
_DEFLATED: Final = frozenset(
    {DEFLATED_EXPLICIT_VR_LE, "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
)

# --- BEGIN GENERATED by `python -m gateway.sopclasses --generate`; do not edit by hand ---
STORAGE_SOP_CLASSES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "1.2.840.10008.5.1.1.27": "Stored Print Storage SOP Class",  # retired
        "1.2.840.10008.5.1.1.29": "Hardcopy Grayscale Image Storage SOP Class",  # retired
        "1.2.840.10008.5.1.1.30": "Hardcopy Color Image Storage SOP Class",  # retired
        "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
        "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.1.3": "Digital Intra-Oral X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy Storage",
        "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
        "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.5": "Nuclear Medicine Image Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
        "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
        "1.2.840.10008.5.1.4.1.1.6.3": "Photoacoustic Image Storage",
        "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.8": "Standalone Overlay Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.9": "Standalone Curve Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.9.1": "Waveform Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.1.4": "General 32-bit ECG Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.2.1": "Hemodynamic Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.3.1": "Cardiac Electrophysiology Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.4.1": "Basic Voice Audio Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.4.2": "General Audio Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.5.1": "Arterial Pulse Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.6.1": "Respiratory Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.6.2": "Multi-channel Respiratory Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.7.1": "Routine Scalp Electroencephalogram Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.7.2": "Electromyogram Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.7.3": "Electrooculogram Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.7.4": "Sleep Electroencephalogram Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.8.1": "Body Position Waveform Storage",
        "1.2.840.10008.5.1.4.1.1.9.100.1": "Waveform Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.9.100.2": "Waveform Acquisition Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.10": "Standalone Modality LUT Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.11": "Standalone VOI LUT Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.2": "Color Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.3": "Pseudo-Color Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.4": "Blending Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.5": "XA/XRF Grayscale Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.6": "Grayscale Planar MPR Volumetric Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.7": "Compositing Planar MPR Volumetric Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.8": "Advanced Blending Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.9": "Volume Rendering Volumetric Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.10": "Segmented Volume Rendering Volumetric Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.11": "Multiple Volume Rendering Volumetric Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.11.12": "Variable Modality LUT Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
        "1.2.840.10008.5.1.4.1.1.12.1.1": "Enhanced XA Image Storage",
        "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
        "1.2.840.10008.5.1.4.1.1.12.2.1": "Enhanced XRF Image Storage",
        "1.2.840.10008.5.1.4.1.1.12.3": "X-Ray Angiographic Bi-Plane Image Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.13.1.1": "X-Ray 3D Angiographic Image Storage",
        "1.2.840.10008.5.1.4.1.1.13.1.2": "X-Ray 3D Craniofacial Image Storage",
        "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
        "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.14.1": "Intravascular Optical Coherence Tomography Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.14.2": "Intravascular Optical Coherence Tomography Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
        "1.2.840.10008.5.1.4.1.1.30": "Parametric Map Storage",
        "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
        "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration Storage",
        "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials Storage",
        "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration Storage",
        "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
        "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation Storage",
        "1.2.840.10008.5.1.4.1.1.66.6": "Tractography Results Storage",
        "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
        "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
        "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping Storage",
        "1.2.840.10008.5.1.4.1.1.68.1": "Surface Scan Mesh Storage",
        "1.2.840.10008.5.1.4.1.1.68.2": "Surface Scan Point Cloud Storage",
        "1.2.840.10008.5.1.4.1.1.77.1": "VL Image Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.3": "Stereometric Relationship Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.4": "Ophthalmic Tomography Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.5": "Wide Field Ophthalmic Photography Stereographic Projection Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.6": "Wide Field Ophthalmic Photography 3D Coordinates Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.7": "Ophthalmic Optical Coherence Tomography En Face Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.5.8": "Ophthalmic Optical Coherence Tomography B-scan Volume Analysis Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.8": "Confocal Microscopy Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.9": "Confocal Microscopy Tiled Pyramidal Image Storage",
        "1.2.840.10008.5.1.4.1.1.77.2": "VL Multi-frame Image Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.78.1": "Lensometry Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.78.2": "Autorefraction Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.78.3": "Keratometry Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.78.4": "Subjective Refraction Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.78.5": "Visual Acuity Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.78.6": "Spectacle Prescription Report Storage",
        "1.2.840.10008.5.1.4.1.1.78.7": "Ophthalmic Axial Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.78.8": "Intraocular Lens Calculations Storage",
        "1.2.840.10008.5.1.4.1.1.79.1": "Macular Grid Thickness and Volume Report Storage",
        "1.2.840.10008.5.1.4.1.1.80.1": "Ophthalmic Visual Field Static Perimetry Measurements Storage",
        "1.2.840.10008.5.1.4.1.1.81.1": "Ophthalmic Thickness Map Storage",
        "1.2.840.10008.5.1.4.1.1.82.1": "Corneal Topography Map Storage",
        "1.2.840.10008.5.1.4.1.1.88.1": "Text SR Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.88.2": "Audio SR Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.88.3": "Detail SR Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.88.4": "Comprehensive SR Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.40": "Procedure Log Storage",
        "1.2.840.10008.5.1.4.1.1.88.50": "Mammography CAD SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document Storage",
        "1.2.840.10008.5.1.4.1.1.88.65": "Chest CAD SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.67": "X-Ray Radiation Dose SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.68": "Radiopharmaceutical Radiation Dose SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.69": "Colon CAD SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.70": "Implantation Plan SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.71": "Acquisition Context SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.72": "Simplified Adult Echo SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.73": "Patient Radiation Dose SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.74": "Planned Imaging Agent Administration SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.75": "Performed Imaging Agent Administration SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.76": "Enhanced X-Ray Radiation Dose SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.77": "Waveform Annotation SR Storage",
        "1.2.840.10008.5.1.4.1.1.90.1": "Content Assessment Results Storage",
        "1.2.840.10008.5.1.4.1.1.91.1": "Microscopy Bulk Simple Annotations Storage",
        "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
        "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA Storage",
        "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL Storage",
        "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ Storage",
        "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL Storage",
        "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
        "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
        "1.2.840.10008.5.1.4.1.1.129": "Standalone PET Curve Storage",  # retired
        "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
        "1.2.840.10008.5.1.4.1.1.131": "Basic Structured Display Storage",
        "1.2.840.10008.5.1.4.1.1.200.1": "CT Defined Procedure Protocol Storage",
        "1.2.840.10008.5.1.4.1.1.200.2": "CT Performed Procedure Protocol Storage",
        "1.2.840.10008.5.1.4.1.1.200.3": "Protocol Approval Storage",
        "1.2.840.10008.5.1.4.1.1.200.7": "XA Defined Procedure Protocol Storage",
        "1.2.840.10008.5.1.4.1.1.200.8": "XA Performed Procedure Protocol Storage",
        "1.2.840.10008.5.1.4.1.1.201.1": "Inventory Storage",
        "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
        "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
        "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
        "1.2.840.10008.5.1.4.1.1.481.4": "RT Beams Treatment Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
        "1.2.840.10008.5.1.4.1.1.481.6": "RT Brachy Treatment Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.7": "RT Treatment Summary Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan Storage",
        "1.2.840.10008.5.1.4.1.1.481.9": "RT Ion Beams Treatment Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.10": "RT Physician Intent Storage",
        "1.2.840.10008.5.1.4.1.1.481.11": "RT Segment Annotation Storage",
        "1.2.840.10008.5.1.4.1.1.481.12": "RT Radiation Set Storage",
        "1.2.840.10008.5.1.4.1.1.481.13": "C-Arm Photon-Electron Radiation Storage",
        "1.2.840.10008.5.1.4.1.1.481.14": "Tomotherapeutic Radiation Storage",
        "1.2.840.10008.5.1.4.1.1.481.15": "Robotic-Arm Radiation Storage",
        "1.2.840.10008.5.1.4.1.1.481.16": "RT Radiation Record Set Storage",
        "1.2.840.10008.5.1.4.1.1.481.17": "RT Radiation Salvage Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.18": "Tomotherapeutic Radiation Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.19": "C-Arm Photon-Electron Radiation Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.20": "Robotic Radiation Record Storage",
        "1.2.840.10008.5.1.4.1.1.481.21": "RT Radiation Set Delivery Instruction Storage",
        "1.2.840.10008.5.1.4.1.1.481.22": "RT Treatment Preparation Storage",
        "1.2.840.10008.5.1.4.1.1.481.23": "Enhanced RT Image Storage",
        "1.2.840.10008.5.1.4.1.1.481.24": "Enhanced Continuous RT Image Storage",
        "1.2.840.10008.5.1.4.1.1.481.25": "RT Patient Position Acquisition Instruction Storage",
        "1.2.840.10008.5.1.4.1.1.501.1": "DICOS CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOS Digital X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOS Digital X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.501.3": "DICOS Threat Detection Report Storage",
        "1.2.840.10008.5.1.4.1.1.501.4": "DICOS 2D AIT Storage",
        "1.2.840.10008.5.1.4.1.1.501.5": "DICOS 3D AIT Storage",
        "1.2.840.10008.5.1.4.1.1.501.6": "DICOS Quadrupole Resonance (QR) Storage",
        "1.2.840.10008.5.1.4.1.1.601.1": "Eddy Current Image Storage",
        "1.2.840.10008.5.1.4.1.1.601.2": "Eddy Current Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.34.1": "RT Beams Delivery Instruction Storage - Trial",  # retired
        "1.2.840.10008.5.1.4.34.7": "RT Beams Delivery Instruction Storage",
        "1.2.840.10008.5.1.4.34.10": "RT Brachy Application Setup Delivery Instruction Storage",
        "1.2.840.10008.5.1.4.38.1": "Hanging Protocol Storage",
        "1.2.840.10008.5.1.4.39.1": "Color Palette Storage",
        "1.2.840.10008.5.1.4.43.1": "Generic Implant Template Storage",
        "1.2.840.10008.5.1.4.44.1": "Implant Assembly Template Storage",
        "1.2.840.10008.5.1.4.45.1": "Implant Template Group Storage",
    }
)

ACCEPTED_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.52",  # JPEG Extended (Process 3 and 5) (retired)
    "1.2.840.10008.1.2.4.53",  # JPEG Spectral Selection, Non-Hierarchical (Process 6 and 8) (retired)
    "1.2.840.10008.1.2.4.54",  # JPEG Spectral Selection, Non-Hierarchical (Process 7 and 9) (retired)
    "1.2.840.10008.1.2.4.55",  # JPEG Full Progression, Non-Hierarchical (Process 10 and 12) (retired)
    "1.2.840.10008.1.2.4.56",  # JPEG Full Progression, Non-Hierarchical (Process 11 and 13) (retired)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.58",  # JPEG Lossless, Non-Hierarchical (Process 15) (retired)
    "1.2.840.10008.1.2.4.59",  # JPEG Extended, Hierarchical (Process 16 and 18) (retired)
    "1.2.840.10008.1.2.4.60",  # JPEG Extended, Hierarchical (Process 17 and 19) (retired)
    "1.2.840.10008.1.2.4.61",  # JPEG Spectral Selection, Hierarchical (Process 20 and 22) (retired)
    "1.2.840.10008.1.2.4.62",  # JPEG Spectral Selection, Hierarchical (Process 21 and 23) (retired)
    "1.2.840.10008.1.2.4.63",  # JPEG Full Progression, Hierarchical (Process 24 and 26) (retired)
    "1.2.840.10008.1.2.4.64",  # JPEG Full Progression, Hierarchical (Process 25 and 27) (retired)
    "1.2.840.10008.1.2.4.65",  # JPEG Lossless, Hierarchical (Process 28) (retired)
    "1.2.840.10008.1.2.4.66",  # JPEG Lossless, Hierarchical (Process 29) (retired)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless Image Compression
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Lossy (Near-Lossless) Image Compression
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component Image Compression
    "1.2.840.10008.1.2.4.94",  # JPIP Referenced
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1",  # Fragmentable MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1",  # Fragmentable MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.102.1",  # Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103.1",  # Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.104.1",  # Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.105.1",  # Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.106.1",  # Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.204",  # JPIP HTJ2K Referenced
    "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.7.1",  # SMPTE ST 2110-20 Uncompressed Progressive Active Video
    "1.2.840.10008.1.2.7.2",  # SMPTE ST 2110-20 Uncompressed Interlaced Active Video
    "1.2.840.10008.1.2.7.3",  # SMPTE ST 2110-30 PCM Digital Audio
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
# --- END GENERATED ---


def is_encapsulated(ts: str) -> bool:
    """Whether Pixel Data is encapsulated (compressed fragments) in ``ts`` (PS3.5 A.4).

    :param ts: a transfer syntax UID.
    :returns: False for the four native syntaxes and the JPIP referenced
        ones (which carry no Pixel Data at all, PS3.5 8.4); True for every
        other syntax in :data:`ACCEPTED_TRANSFER_SYNTAXES`; False for a
        syntax we do not know.
    """
    return ts in ACCEPTED_TRANSFER_SYNTAXES and ts not in _NATIVE and ts not in _JPIP


def is_little_endian(ts: str) -> bool:
    """Whether the data set in ``ts`` is little endian (PS3.5 7.3).

    Only Explicit VR Big Endian (PS3.5 A.3) is big endian; every other DICOM
    transfer syntax, encapsulated ones included, is little endian.

    :param ts: a transfer syntax UID.
    :returns: True unless ``ts`` is Explicit VR Big Endian.
    """
    return ts != EXPLICIT_VR_BE


def is_implicit_vr(ts: str) -> bool:
    """Whether the data set in ``ts`` is encoded with implicit VR (PS3.5 7.1.3, A.1).

    Only the default Implicit VR Little Endian is; every other standard
    transfer syntax uses explicit VR.

    :param ts: a transfer syntax UID.
    :returns: True only for Implicit VR Little Endian.
    """
    return ts == IMPLICIT_VR_LE


def is_deflated(ts: str) -> bool:
    """Whether the whole data set in ``ts`` is deflated (PS3.5 A.5, A.7, A.12).

    :param ts: a transfer syntax UID.
    :returns: True for Deflated Explicit VR LE and the two JPIP "Deflate"
        syntaxes; False otherwise (Deflated Image Frame Compression deflates
        frames, not the data set).
    """
    return ts in _DEFLATED


# ---------------------------------------------------------------------------
# Generator (development tool; the gateway itself only reads the literals)
# ---------------------------------------------------------------------------

#: A pydicom registry entry: (name, type, info, retired, keyword).
RegistryEntry = tuple[str, str, str, str, str]


def _uid_key(uid: str) -> tuple[int, ...]:
    """Sort UIDs by their numeric components, so 1.2.10 follows 1.2.9."""
    return tuple(int(part) for part in uid.split("."))


def _pydicom_registry() -> Mapping[str, RegistryEntry]:
    """pydicom's UID registry (imported lazily: only the generator needs pydicom)."""
    from pydicom._uid_dict import UID_dictionary

    registry: Mapping[str, RegistryEntry] = UID_dictionary
    return registry


def generate_storage_sop_classes(registry: Mapping[str, RegistryEntry] | None = None) -> dict[str, str]:
    """Compute the storage SOP class list from a UID registry (see the module docstring).

    :param registry: a pydicom-shaped registry; pydicom's own by default.
    :returns: UID -> name, sorted by UID.
    """
    registry = _pydicom_registry() if registry is None else registry
    found = {
        uid: entry[0]
        for uid, entry in registry.items()
        if entry[1] == "SOP Class" and "Storage" in entry[0] and uid not in NOT_INSTANCE_STORAGE
    }
    for uid, name in _NEWER_STORAGE_SOP_CLASSES.items():
        found.setdefault(uid, name)
    return dict(sorted(found.items(), key=lambda item: _uid_key(item[0])))


def generate_transfer_syntaxes(registry: Mapping[str, RegistryEntry] | None = None) -> tuple[str, ...]:
    """Compute the accepted transfer syntax list from a UID registry (see the module docstring).

    :param registry: a pydicom-shaped registry; pydicom's own by default.
    :returns: the four native syntaxes, then the others sorted by UID.
    """
    registry = _pydicom_registry() if registry is None else registry
    others = {
        uid
        for uid, entry in registry.items()
        if entry[1] == "Transfer Syntax" and uid not in NOT_NETWORK_TRANSFER_SYNTAXES
    }
    others |= set(_NEWER_TRANSFER_SYNTAXES)
    others -= set(_NATIVE)
    return _NATIVE + tuple(sorted(others, key=_uid_key))


def generate_source(registry: Mapping[str, RegistryEntry] | None = None) -> str:
    """Render the two generated blocks of this module as Python source.

    :param registry: a pydicom-shaped registry; pydicom's own by default.
    :returns: the text to paste between the GENERATED markers.
    """
    registry = _pydicom_registry() if registry is None else registry
    names = dict(_NEWER_TRANSFER_SYNTAXES)
    lines = ["STORAGE_SOP_CLASSES: Final[Mapping[str, str]] = MappingProxyType(", "    {"]
    for uid, name in generate_storage_sop_classes(registry).items():
        retired = uid in registry and registry[uid][3] == "Retired"
        lines.append(f"        {uid!r}: {name!r},{'  # retired' if retired else ''}".replace("'", '"'))
    lines += ["    }", ")", "", "ACCEPTED_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = ("]
    for uid in generate_transfer_syntaxes(registry):
        name = registry[uid][0] if uid in registry else names[uid]
        retired = " (retired)" if uid in registry and registry[uid][3] == "Retired" else ""
        lines.append(f'    "{uid}",  # {name}{retired}')
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m gateway.sopclasses --generate`` prints the generated blocks.

    :param argv: arguments without the program name; ``sys.argv[1:]`` by default.
    :returns: the process exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m gateway.sopclasses", description=__doc__.splitlines()[0])
    parser.add_argument("--generate", action="store_true", help="print the generated literal blocks")
    args = parser.parse_args(argv)
    if not args.generate:
        parser.print_help()
        return 2
    sys.stdout.write(generate_source())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
