"""Dataset preparation scripts; a package so that they can share code as data.text.prepare etc."""
