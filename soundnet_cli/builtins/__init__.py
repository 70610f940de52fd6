"""Builtin plugins: ordinary hookimpl modules, loaded through the "soundnet" entry-point group."""
