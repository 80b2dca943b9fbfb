"""Sharing the bundle between sites: export one self-contained bundle, verify and unpack a received one."""
