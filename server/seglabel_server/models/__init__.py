"""Models: the repository an export writes (manifest, graphs, packages), the registered model kinds
(what each model takes, how its items batch, what it answers), each model's input preparation from
an image, the PyTorch modules the torch backend and the export build, the CLIP tokenizer and the
default vocabulary. The export reaches the server through this layer only."""
