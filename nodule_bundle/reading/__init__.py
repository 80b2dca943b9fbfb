"""Reading CT: DICOM series, image readers, scans by series UID."""
