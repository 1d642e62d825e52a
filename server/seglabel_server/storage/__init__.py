"""What the server keeps between requests: uploaded files (memory, disk or Redis) and the image
embeddings of images seen before."""
