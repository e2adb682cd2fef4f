"""Sizes in bytes, in one place: every module counts KiB, MiB, GiB and 4 KiB pages the same way."""

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
PAGE = 4 * KIB                  # the 4 KiB page (the translation granule)
