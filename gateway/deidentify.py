"""PS3.15 Annex E: the Basic Application Level Confidentiality Profile (``deidentify: basic``).

The table
---------
PS3.15 Table E.1-1 lists about 650 attributes with an action code in the
"Basic Prof." column. We do not transcribe it: the PyPI package
``dicom-anonymizer`` (BSD licence) ships the column as data, one Python list
per code (``D_TAGS``, ``Z_TAGS``, ``X_TAGS``, ``U_TAGS``, ``Z_D_TAGS``,
``X_Z_TAGS``, ``X_D_TAGS``, ``X_Z_D_TAGS``, ``X_Z_U_STAR_TAGS``) of
``(group, element)`` tuples, or ``(group, element, group_mask, element_mask)``
for repeating groups such as ``(50xx,xxxx)`` Curve Data and ``(60xx,3000)``
Overlay Data. :data:`BASIC_PROFILE` is built from its ``dicomfields_2026c``
module (the 2026c edition of the standard). Only the table is used; applying
it is ours (header only, splice writer, tail walk).

Action codes (PS3.15 E.1.1, Table E.1-1 legend)
------------------------------------------------
``D`` replace with a non-zero length dummy value consistent with the VR;
``Z`` replace with a zero length value (or a dummy); ``X`` remove; ``K``
keep; ``C`` clean; ``U`` replace a UID with a non-zero length UID that is
internally consistent within a set of instances. The combined codes depend on
the attribute's Type in the IOD (``X/Z``: X unless Type 2 requires Z, ...),
which a router cannot know for every IOD. **We take the stricter reading,
the one that leaves the least behind**: every combination containing ``X``
is ``X`` (``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``), and ``Z/D`` is ``Z``.
The result may lack Type 1 or Type 2 attributes of its IOD; that is the price
of not leaking them.

Sequences: ``X`` removes, ``Z`` empties (zero items); ``D`` and ``K`` keep
the sequence and de-identify its items recursively (a dummy sequence is a
sequence whose contents have been cleaned). Every nested data set gets the
same treatment (PS3.15 E.3: the profile applies to nested attributes).

Private attributes are removed (Table E.1-1 "Private attributes: X"), private
creators included. UIDs (``U``) are replaced with the HMAC scheme of
:mod:`gateway.uidremap`, so the same salt gives the same UIDs as
``uid_remap`` and studies stay together. UIDs of the standard itself
(1.2.840.10008...) are kept.

Elements after the pixel data are reached by the splice writer's tail walk:
there, anything the profile does not keep is removed (tail elements cannot be
altered, so ``D``/``Z``/``U`` become removal), which removes Digital
Signatures (FFFA,FFFA), Data Set Trailing Padding (FFFC,FFFC) and trailing
private groups.

Afterwards (PS3.15 E.1.1, PS3.3 C.12.1.1.1 SOP Common): Patient Identity
Removed (0012,0062) is ``YES``, De-identification Method (0012,0063) names
the profile and options, and De-identification Method Code Sequence
(0012,0064) holds the PS3.16 CID 7050 codes.

Options (PS3.15 E.3, the columns where K and C live), selected by name:

* ``retain_uids`` (E.3.9, 113110): ``U`` becomes ``K``;
* ``retain_longitudinal_temporal`` (E.3.6, 113106, full dates): every table
  attribute whose VR is DA, DT or TM is kept;
* ``retain_patient_characteristics`` (E.3.7, 113108): the patient
  characteristics listed in :data:`_PATIENT_CHARACTERISTICS` are kept;
* ``retain_device_identity`` (E.3.8, 113109): :data:`_DEVICE_IDENTITY` kept;
* ``retain_institution_identity`` (E.3.11, 113112): :data:`_INSTITUTION_IDENTITY` kept.

``retain_safe_private`` and the ``clean_*`` options need per-attribute
knowledge (a safe private list, free-text cleaning) that this gateway does
not have; they are refused at configuration load rather than silently
leaking or silently removing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.morph import Change
from gateway.uidremap import check_root, remap_values
from gateway.vr import describe_value
from gateway.vrfacts import OTHER_VRS

__all__ = [
    "BASIC_PROFILE",
    "BASIC_PROFILE_MASKED",
    "OPTIONS",
    "DeidentifyAction",
    "basic_code",
    "effective_code",
    "compile_profile",
    "dummy_value",
]


def _load_table() -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """Build the Basic Profile column from ``dicom-anonymizer``'s data (see the module doc)."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    lists = {
        "D": table.D_TAGS, "Z": table.Z_TAGS, "X": table.X_TAGS, "U": table.U_TAGS,
        "Z/D": table.Z_D_TAGS, "X/Z": table.X_Z_TAGS, "X/D": table.X_D_TAGS,
        "X/Z/D": table.X_Z_D_TAGS, "X/Z/U*": table.X_Z_U_STAR_TAGS,
    }  # fmt: skip
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for code, entries in lists.items():
        for entry in entries:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = code
            else:
                group, element, group_mask, element_mask = entry
                masked.append(((group << 16) | element, (group_mask << 16) | element_mask, code))
    return exact, tuple(masked)


#: Tag -> Basic Profile action code (PS3.15 Table E.1-1), exact tags.
#: ``BASIC_PROFILE_MASKED``: ``(value, mask, code)`` for repeating groups.
BASIC_PROFILE, BASIC_PROFILE_MASKED = _load_table()

#: PS3.16 CID 7050 De-identification Method codes (scheme DCM).
_CID_7050: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_longitudinal_temporal": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

#: The options this gateway implements.
OPTIONS = frozenset(_CID_7050) - {"basic"}
_UNSUPPORTED = {
    "retain_safe_private": "needs a list of safe private attributes per creator, which the gateway does not have",
    "clean_descriptors": "cleaning free text needs a human or a dedicated tool",
    "clean_structured_content": "cleaning SR content needs a dedicated tool",
    "clean_graphics": "cleaning graphics needs a dedicated tool",
    "clean_pixel_data": "burned-in text removal decodes pixel data, which the gateway never does",
    "clean_recognizable_visual_features": "needs pixel processing, which the gateway never does",
    "retain_longitudinal_temporal_modified_dates": "use date_shift before deidentify with retain_longitudinal_temporal",
}

# PS3.15 Table E.1-1 "Rtn. Pat. Chars. Opt." column K entries (hand-picked).
_PATIENT_CHARACTERISTICS = frozenset(
    {
        0x00100040, 0x00101010, 0x00101020, 0x00101030, 0x00102160, 0x001021A0, 0x001021C0,
        0x00102203, 0x00101022, 0x00101023, 0x00101024, 0x00380500, 0x00400012,
    }
)  # fmt: skip
# "Rtn. Dev. Id. Opt." column K entries (hand-picked): device serial numbers
# and IDs, station name, device UID and label.
_DEVICE_IDENTITY = frozenset(
    {
        0x00181000, 0x00081010, 0x00181002, 0x0018700A, 0x00181004, 0x00181005, 0x00181007,
        0x00181008, 0x0018100B, 0x3010002D, 0x00181009, 0x0018700C, 0x0018700E,
    }
)  # fmt: skip
# "Rtn. Inst. Id. Opt." column K entries: institution name, address, department, codes.
_INSTITUTION_IDENTITY = frozenset({0x00080080, 0x00080081, 0x00081040, 0x00080082, 0x00081041})

_DATE_TIME_VRS = frozenset({"DA", "DT", "TM"})


def basic_code(tag: int) -> str | None:
    """The Basic Profile code of ``tag`` as Table E.1-1 writes it, or None when not listed.

    :param tag: a standard (even group) tag.
    :returns: ``"D"``, ``"X/Z"``, ... or None.
    """
    code = BASIC_PROFILE.get(tag)
    if code is not None:
        return code
    for value, mask, masked_code in BASIC_PROFILE_MASKED:
        if tag & mask == value:
            return masked_code
    return None


def _resolve(code: str) -> str:
    """The stricter reading of a combined code (module doc): X wins, then Z."""
    if "X" in code.split("/"):
        return "X"
    if code == "Z/D":
        return "Z"
    return code


def effective_code(tag: int, options: frozenset[str] = frozenset()) -> str:
    """What the profile does to ``tag``: ``X``, ``Z``, ``D``, ``U`` or ``K``.

    :param tag: the element's tag.
    :param options: selected option names (:data:`OPTIONS`).
    :returns: one code; private tags are ``X``; unlisted standard tags ``K``.
    """
    if (tag >> 16) & 1:
        return "X"
    code = basic_code(tag)
    if code is None:
        return "K"
    code = _resolve(code)
    if code == "U" and "retain_uids" in options:
        return "K"
    if "retain_patient_characteristics" in options and tag in _PATIENT_CHARACTERISTICS:
        return "K"
    if "retain_device_identity" in options and tag in _DEVICE_IDENTITY:
        return "K"
    if "retain_institution_identity" in options and tag in _INSTITUTION_IDENTITY:
        return "K"
    if "retain_longitudinal_temporal" in options:
        try:
            if dictionary_VR(tag) in _DATE_TIME_VRS:
                return "K"
        except KeyError:
            pass
    return code


#: Dummy values per VR for ``D`` (PS3.15 E.1.1: "non-zero length ... consistent with the VR").
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMOUS", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMOUS", "LT": "ANONYMOUS",
    "PN": "ANONYMOUS", "SH": "ANONYMOUS", "ST": "ANONYMOUS", "TM": "000000",
    "UC": "ANONYMOUS", "UR": "http://anonymous", "UT": "ANONYMOUS",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
}  # fmt: skip


def dummy_value(vr: str) -> Any:
    """The dummy value ``D`` puts in an element of VR ``vr``.

    :param vr: the VR.
    :returns: a valid non-empty value; binary VRs get two zero bytes.
    """
    return _DUMMY.get(vr, b"\x00\x00")


def _empty_value(vr: str) -> Any:
    """The zero-length value ``Z`` puts in an element of VR ``vr``."""
    if vr == "SQ":
        return []
    if vr in OTHER_VRS or vr == "UN":
        return b""
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"):
        return None
    return ""


@dataclass(frozen=True)
class DeidentifyAction:
    """``deidentify``: the Basic Profile with options (see the module doc).

    :ivar options: selected option names.
    :ivar salt: the key for ``U`` (the same as a ``uid_remap`` salt gives the same UIDs).
    :ivar root: the UID root for ``U``.
    """

    options: frozenset[str] = frozenset()
    salt: str = ""
    root: str = "2.25"

    touches_tail = True

    def drops_tail(self, tag: int) -> bool:
        """Whether an element after the pixel data goes: everything the profile does not keep.

        :param tag: the element's tag.
        :returns: True unless the code is ``K``.
        """
        return effective_code(tag, self.options) != "K"

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """De-identify ``dataset`` in place, nested items included, then mark it.

        :param dataset: the header.
        :param context: unused.
        :returns: every change.
        """
        changes: list[Change] = []
        self._clean(dataset, "", changes)
        self._mark(dataset, changes)
        return changes

    def _clean(self, dataset: Dataset, prefix: str, changes: list[Change]) -> None:
        for tag in list(dataset.keys()):
            tag = int(tag)
            element: DataElement = dataset[tag]
            keyword = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            label = f"{prefix}/{keyword}" if prefix else keyword
            code = effective_code(tag, self.options)
            old = describe_value(element)
            if code == "X":
                del dataset[tag]
                changes.append(Change(label, old, None))
                continue
            if code == "Z":
                element.value = _empty_value(element.VR)
            elif code == "D" and element.VR not in ("SQ", "UI"):
                element.value = dummy_value(element.VR)
            elif code in ("U", "D") and element.VR == "UI":
                # A dummy UID (D on a UI element) is made the U way, so
                # references to it stay consistent.
                texts = [str(v) for v in (element.value if element.VM > 1 else [element.value])] if element.value else []
                new = remap_values(texts, self.salt, self.root)
                element.value = new[0] if len(new) == 1 else new
            # K, D on a sequence, and U on a sequence: keep, clean the items.
            if element.VR == "SQ" and element.value:
                for index, item in enumerate(element.value):
                    self._clean(item, f"{label}[{index}]", changes)
            new_text = describe_value(element)
            if new_text != old:
                changes.append(Change(label, old, new_text))

    def _mark(self, dataset: Dataset, changes: list[Change]) -> None:
        """PS3.15 E.1.1 / PS3.3 C.12.1.1.1: say what was done to the data set."""
        names = ["basic", *sorted(self.options)]
        method = ["PS3.15 E.1 Basic Application Level Confidentiality Profile"] + [
            _CID_7050[name][1][:64] for name in names[1:]
        ]
        before = {
            tag: describe_value(dataset.get(tag)) for tag in (0x00120062, 0x00120063, 0x00120064)
        }
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = method[0] if len(method) == 1 else method
        items = []
        for name in names:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = _CID_7050[name][0], "DCM", _CID_7050[name][1]
            items.append(item)
        dataset.DeidentificationMethodCodeSequence = items
        for tag, old in before.items():
            new = describe_value(dataset.get(tag))
            if new != old:
                changes.append(Change(keyword_for_tag(tag), old, new))


def compile_profile(spec: Any) -> DeidentifyAction:
    """Build the action from ``deidentify:``'s value.

    Accepted: ``basic``, or ``{profile: basic, options: [...], salt: ..., uid_root: ...}``.

    :param spec: the plain YAML value.
    :returns: the action.
    :raises ValueError: on an unknown profile, option or key, or an unsupported option.
    """
    if spec == "basic":
        return DeidentifyAction()
    if not isinstance(spec, dict):
        raise ValueError("expected 'basic' or {profile: basic, options: [...], salt: ..., uid_root: ...}")
    unknown = set(spec) - {"profile", "options", "salt", "uid_root"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} (expected profile, options, salt, uid_root)")
    if spec.get("profile", "basic") != "basic":
        raise ValueError(f"unknown profile {spec.get('profile')!r}: only 'basic' (PS3.15 E.1) is implemented")
    options = spec.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError("options: expected a list of option names")
    for option in options:
        if option in _UNSUPPORTED:
            raise ValueError(f"option {option} is not supported: {_UNSUPPORTED[option]}")
        if option not in OPTIONS:
            raise ValueError(f"unknown option {option!r} (known: {', '.join(sorted(OPTIONS))})")
    salt = spec.get("salt", "")
    if not isinstance(salt, str):
        raise ValueError("salt: expected a string")
    root = str(spec.get("uid_root", "2.25"))
    problem = check_root(root)
    if problem:
        raise ValueError(f"uid_root: {problem}")
    return DeidentifyAction(frozenset(options), salt, root)
