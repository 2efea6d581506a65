"""Everything zns-gate knows of Zalo's own API: a local fake of it now, its clients next."""
