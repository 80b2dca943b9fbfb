"""Reports: report.json / CSV, pictures, HTML, DICOM SEG and SR."""
