"""The labelling tools' own formats (Label Studio, CVAT): pure conversions, no I/O, shared by the
server's Label Studio backend and the ``seglabel label`` writers."""
