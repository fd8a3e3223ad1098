"""Device backends: tape drives (virtual cartridge, Linux st) behind one small interface."""
