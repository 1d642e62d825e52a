"""The default vocabulary (the seed's list, "book" once) and the prompt templates CLIP text
embeddings are averaged over."""

DEFAULT_VOCABULARY = (
    "person", "dog", "cat", "bird", "horse", "cow", "sheep", "car", "truck", "bus", "motorcycle", "bicycle",
    "tree", "grass", "sky", "water", "building", "house", "window", "door", "fence", "road", "sign",
    "traffic light", "chair", "table", "bed", "sofa", "lamp", "phone", "laptop", "keyboard", "mouse",
    "monitor", "television", "bottle", "cup", "bowl", "plate", "fork", "knife", "spoon", "banana", "apple",
    "orange", "broccoli", "carrot", "pizza", "donut", "cake", "sandwich", "hot dog", "hamburger",
    "french fries", "book",
)

# A small ensemble from CLIP's ImageNet prompt engineering: more robust than one template.
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)

UNKNOWN_LABEL = "unknown"
