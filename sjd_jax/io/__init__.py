"""Files: atomic writes (``atomic``), checksums (``integrity``), checkpoints, PNGs (``imaging``) and
streaming batch generation to disk (``streaming``)."""
