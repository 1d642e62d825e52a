import numpy as np
import open_clip
from seglabel_export.sources import bpe_vocab_path
from seglabel_server.models.tokenizer import ClipTokenizer
from seglabel_server.models.vocab import DEFAULT_VOCABULARY, TEMPLATES


def test_same_ids_as_open_clip():
    ours = ClipTokenizer(bpe_vocab_path())
    ref = open_clip.get_tokenizer("ViT-B-32")
    texts = [t.format(v) for v in DEFAULT_VOCABULARY for t in TEMPLATES[:2]]
    texts += [
        "Traffic   Light!!",
        "café au lait",
        "a photo of a 3D-printed R2-D2's arm",
        "x" * 400,
        "&amp; fish",
    ]
    np.testing.assert_array_equal(ours(texts), ref(texts).numpy().astype(np.int32))


def test_shape_and_dtype():
    ids = ClipTokenizer(bpe_vocab_path(), context_length=77)(["dog", "hot dog"])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    assert ids[0, 0] == 49406 and 49407 in ids[0]
