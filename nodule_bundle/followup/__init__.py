"""Follow-up scans: a prior registered to the current scan, nodules matched across time, and their change."""
