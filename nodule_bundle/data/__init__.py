"""Data: datalists, nodule lists, dataset converters (LUNA16, LIDC-IDRI, a site's CSV), the phantom and the real-geometry source."""
