"""Which study of the datastore is a clicked study's prior.

A study's patient and date are the datastore's own image info, under the names MONAI Label's DICOMweb
datastore records them: ``PatientID`` and ``StudyDate`` (``YYYYMMDD``). A local datastore's studies
get them with ``PUT /datastore/image/info?image=<id>`` (form field ``info``: ``{"PatientID": ...,
"StudyDate": ...}``). The prior is the latest study of the same patient dated before the clicked one;
a request names another with ``"prior": "<image id>"`` in its params, or none with ``"prior": false``.
"""

from __future__ import annotations

import datetime

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.followup.report import study_date


#: What MONAI Label's DICOMweb datastore records for a field a series does not have.
UNKNOWN = "UNK"


def _identity(datastore: Datastore, image_id: str, strict: bool) -> tuple[str | None, datetime.date | None]:
    """A study's ``PatientID`` and ``StudyDate`` from its image info (``None``: not known). A date that
    is not ``YYYYMMDD`` is a 422 when ``strict``, unknown otherwise (a click without a named prior is
    answered, without the prior, whatever the datastore holds)."""
    info = datastore.get_image_info(image_id) or {}
    patient, date = (None if info.get(k) in (None, "", UNKNOWN) else str(info[k]) for k in ("PatientID", "StudyDate"))
    try:
        return patient, study_date(date, f"study {image_id}")
    except NoduleBundleError as err:
        if strict:
            raise HTTPException(status_code=422, detail=str(err)) from err
        return patient, None


def prior_study(datastore: Datastore, image_id: str, choice: object = None) -> dict | None:
    """``{"image_id", "image" (its path), "study_date", "interval_days"}`` of ``image_id``'s prior study, or
    ``None`` when it has none or ``choice`` is ``False``; ``choice``: a prior's image id, or ``None`` to
    look it up. A named prior of another patient, not older, or with a malformed date is a 422; an
    unknown one a 404."""
    if choice is False:
        return None
    if choice is not None and not isinstance(choice, str):
        raise HTTPException(status_code=422, detail=f"prior must be an image id or false, got {str(choice)[:80]}")
    named = choice is not None
    patient, date = _identity(datastore, image_id, strict=named)
    if not named:
        if not (patient and date):
            return None
        older = [(d, other) for other in datastore.list_images() if other != image_id
                 for p, d in [_identity(datastore, other, strict=False)] if p == patient and d and d < date]  # fmt: skip
        if not older:
            return None
        choice = max(older)[1]
    elif choice not in datastore.list_images():
        raise HTTPException(status_code=404, detail=f"unknown prior image id {choice[:80]!r}: not in this server's studies")
    prior_patient, prior_date = _identity(datastore, choice, strict=named)
    if patient and prior_patient and patient != prior_patient:
        raise HTTPException(status_code=422, detail=f"{choice} -> {image_id}: the studies are of two patients (PatientID {prior_patient} and {patient})")
    if date and prior_date and prior_date >= date:
        raise HTTPException(status_code=422, detail=f"{choice} -> {image_id}: the prior study ({prior_date}) is not older than the current one ({date})")
    return {
        "image_id": choice, "image": datastore.get_image_uri(choice), "study_date": prior_date.strftime("%Y%m%d") if prior_date else None,
        "interval_days": (date - prior_date).days if date and prior_date else None,
    }  # fmt: skip
