"""Finding nodules in a whole scan: lung mask, candidates, FROC."""
